//! Opening repositories. [`Repository`] knows the config and the snapshots; an
//! [`IndexedRepository`] has loaded the index too and reads blobs, trees and files. Both are
//! cheap to clone and safe to share between threads; neither writes (backups and maintenance
//! take an [`IndexedRepository`] and a lock).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use parking_lot::{Mutex as PlMutex, RwLock};

use crate::backend::{Backend, FileKind, LocalBackend};
use crate::blob;
use crate::cache::ByteLru;
use crate::codec::Codec;
use crate::crypto::{Crypto, MasterKey};
use crate::error::{Error, Result};
use crate::flight::SingleFlight;
use crate::format::{
    BlobId, ChunkId, ChunkerParams, CompressionParams, Config, Node, NodeKind, Snapshot, SnapshotId, Tree, TreeId,
};
use crate::format::{ConfigHead, Encryption};
use crate::index::{Index, Location};
use crate::keys::{KdfParams, KeyFile, Secret};
use std::sync::Arc as Shared;

/// A snapshot and its id.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotEntry {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
}

/// An open repository: its config and backend. Reads snapshots; for blobs, open the index.
#[derive(Clone)]
pub struct Repository {
    inner: Arc<RepoInner>,
}

struct RepoInner {
    backend: Shared<dyn Backend>,
    config: Config,
    codec: Codec,
    /// The key file that opened an encrypted repository.
    key_name: Option<String>,
    /// A remote repository's tree cache (in its cache folder, found once at open).
    tree_cache: Option<PathBuf>,
}

/// How to protect a new repository.
#[allow(clippy::large_enum_variant)]
pub enum NewKey {
    /// Version 1: no encryption (`init --insecure-no-encryption`).
    None,
    /// Version 2: a new random master key wrapped under `secret`; with `content_identity_of`,
    /// the id and chunker keys of that repository's master key (`init --copy-chunker-params`),
    /// so that copies between the two deduplicate.
    Encrypted { secret: Secret, kdf: KdfParams, content_identity_of: Option<Box<MasterKey>> },
}

impl NewKey {
    /// An encrypted repository with the password `"test"` and the cheapest key derivation: for
    /// tests of everything but the key derivation, which then costs nothing.
    #[doc(hidden)]
    pub fn test() -> NewKey {
        NewKey::Encrypted {
            secret: Secret::password("test"),
            kdf: KdfParams { memory_kib: 64, iterations: 1, ..KdfParams::default() },
            content_identity_of: None,
        }
    }
}

impl Repository {
    /// Create a new, empty repository at `path` (which must not exist or be an empty directory).
    pub fn init(
        path: &Path,
        chunker: ChunkerParams,
        compression: CompressionParams,
        key: NewKey,
    ) -> Result<Repository> {
        Self::init_in(Shared::new(LocalBackend::new(path)), chunker, compression, key)
    }

    /// Create a new, empty repository in `backend`'s storage (which must hold none).
    pub fn init_in(
        backend: Shared<dyn Backend>,
        chunker: ChunkerParams,
        compression: CompressionParams,
        key: NewKey,
    ) -> Result<Repository> {
        chunker.validate()?;
        backend.prepare_new()?;
        let (config, config_bytes, secret) = match key {
            NewKey::None => {
                let config = Config::new(chunker, compression, Encryption::None);
                let bytes = config.encode();
                (config, bytes, None)
            }
            NewKey::Encrypted { secret, kdf, content_identity_of } => {
                let config = Config::new(chunker, compression, Encryption::Aes256Gcm);
                let mut master = MasterKey::random();
                if let Some(other) = content_identity_of {
                    master = master.with_content_identity_of(&other);
                }
                // The key file first: a config that no key opens would be a dead repository.
                let kf = KeyFile::wrap(&master, &config.id, &secret, kdf)?;
                let bytes = kf.encode();
                backend.put(FileKind::Key, &KeyFile::name_of(&bytes), &bytes)?;
                let crypto = Crypto::Encrypted(Box::new(master));
                let bytes = config.encode_sealed(&crypto);
                (config, bytes, Some(secret))
            }
        };
        // The config goes last: a place without one is not a repository yet. Created
        // exclusively: of two inits of one place at once, exactly one succeeds.
        match backend.put_new(FileKind::Config, "config", &config_bytes) {
            Err(Error::AlreadyExists(_)) => return Err(Error::AlreadyExists(PathBuf::from(backend.location()))),
            r => r?,
        }
        backend.ensure_reserve();
        debug_assert_eq!(config.encryption.is_none(), secret.is_none());
        Repository::open_in(backend, secret.as_ref())
    }

    /// What the config says in the clear: which repository, which version, whether encrypted.
    pub fn head(path: &Path) -> Result<ConfigHead> {
        Self::head_in(&LocalBackend::new(path))
    }

    /// [`Repository::head`] of the repository in `backend`'s storage.
    pub fn head_in(backend: &dyn Backend) -> Result<ConfigHead> {
        ConfigHead::decode(&Self::config_bytes(backend)?)
    }

    fn config_bytes(backend: &dyn Backend) -> Result<Vec<u8>> {
        match backend.get(FileKind::Config, "config") {
            Ok(b) => Ok(b),
            Err(Error::NotFound(_)) => Err(Error::NoRepository(PathBuf::from(backend.location()))),
            Err(e) => Err(e),
        }
    }

    /// Open the repository at `path`, refusing formats newer than this build. An encrypted one
    /// needs `secret` (a password or raw key that opens one of its key files).
    pub fn open(path: &Path, secret: Option<&Secret>) -> Result<Repository> {
        Self::open_in(Shared::new(LocalBackend::new(path)), secret)
    }

    /// [`Repository::open`] of the repository in `backend`'s storage.
    pub fn open_in(backend: Shared<dyn Backend>, secret: Option<&Secret>) -> Result<Repository> {
        let bytes = Self::config_bytes(&*backend)?;
        let head = ConfigHead::decode(&bytes)?;
        let (config, codec, key_name) = if head.encryption.is_none() {
            (Config::decode(&bytes)?, Codec::plain(), None)
        } else {
            let secret = secret.ok_or_else(|| {
                Error::Key(format!(
                    "repository {} is encrypted: give its password (REWIND_PASSWORD, REWIND_PASSWORD_FILE, --password-file, --password-command) or raw key (--key-file)",
                    backend.location()
                ))
            })?;
            let (name, master) = unlock(&*backend, &head, secret)?;
            let crypto = Crypto::Encrypted(Box::new(master));
            (Config::decode_sealed(&bytes, &crypto)?, Codec::encrypted(crypto), Some(name))
        };
        let codec = codec.for_repository_version(config.version);
        // A remote repository keeps copies of its index files, snapshots and trees on the local disk.
        let (backend, tree_cache): (Shared<dyn Backend>, _) = if backend.local_root().is_none() {
            let dir = cache_root().join(config.id.to_hex());
            // Kept within its bound, off the way of whoever opens the repository.
            let root = dir.clone();
            let _ = std::thread::Builder::new()
                .name("cache-trim".into())
                .spawn(move || crate::local_cache::trim(&root, crate::local_cache::max_bytes()));
            let trees = dir.join("trees");
            (Shared::new(crate::local_cache::LocalCache::new(backend, dir)), Some(trees))
        } else {
            (backend, None)
        };
        codec.set_dict_source(backend.clone());
        Ok(Repository { inner: Arc::new(RepoInner { backend, config, codec, key_name, tree_cache }) })
    }

    /// Where the repository is, for messages: its directory, or its S3 location.
    pub fn location(&self) -> String {
        self.inner.backend.location()
    }

    /// The repository's directory, if it is on the local filesystem.
    pub fn local_path(&self) -> Option<&Path> {
        self.inner.backend.local_root()
    }

    /// Where a file of the repository is, for messages: a path, or its object's location.
    pub fn file_path(&self, kind: FileKind, name: &str) -> PathBuf {
        match self.local_path() {
            Some(root) => LocalBackend::new(root).path(kind, name),
            None => PathBuf::from(format!("{}/{}", self.location(), kind.relative_path(name))),
        }
    }

    /// This repository's folder of local caches (its file catalog; a remote repository's copies
    /// of its index and snapshots): [`cache_root`], then the repository's id. Safe to delete:
    /// all of it is rebuilt.
    pub fn cache_dir(&self) -> PathBuf {
        cache_root().join(self.config().id.to_hex())
    }

    /// [`Repository::cache_dir`], this user's alone: made 0700, or, when an older rewind made
    /// it under a lax umask (this user's own folder, not a link), with group and others' write
    /// taken away; then checked like any folder for plaintext ([`private_folder`]).
    pub fn private_cache_dir(&self) -> Result<PathBuf> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let dir = self.cache_dir();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        if let Ok(m) = std::fs::symlink_metadata(&dir)
            && m.is_dir()
            && m.uid() == uid
            && m.mode() & 0o022 != 0
        {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&dir)
                .map_err(|e| Error::io(&dir, e))?;
            f.set_permissions(std::fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(&dir, e))?;
        }
        private_folder(&dir)?;
        Ok(dir)
    }

    /// Where this process keeps copies of trees it writes or reads: a remote repository's cache
    /// folder; none for a local one.
    pub(crate) fn tree_cache(&self) -> Option<&Path> {
        self.inner.tree_cache.as_deref()
    }

    /// The storage behind the repository (shared by every copy of this handle).
    pub fn storage(&self) -> Shared<dyn Backend> {
        self.inner.backend.clone()
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.inner.backend
    }

    /// How this repository's objects are written.
    pub fn codec(&self) -> &Codec {
        &self.inner.codec
    }

    pub fn is_encrypted(&self) -> bool {
        self.inner.codec.is_encrypted()
    }

    /// The master key of an encrypted repository (for `init --copy-chunker-params`).
    pub fn master_key(&self) -> Option<&MasterKey> {
        match self.inner.codec.crypto() {
            Crypto::Encrypted(k) => Some(k),
            Crypto::None => None,
        }
    }

    /// The key files, by name; damaged ones with their error.
    pub fn key_files(&self) -> Result<Vec<(String, Result<KeyFile>)>> {
        let backend = self.backend();
        Ok(backend
            .list(FileKind::Key)?
            .into_iter()
            .filter_map(|name| match backend.get(FileKind::Key, &name) {
                Ok(b) => Some((name, KeyFile::decode(&b))),
                Err(Error::NotFound(_)) => None,
                Err(e) => Some((name, Err(e))),
            })
            .collect())
    }

    /// The key file this process opened the repository with.
    pub fn key_name(&self) -> Option<&str> {
        self.inner.key_name.as_deref()
    }

    /// Add a key file wrapping this repository's master key under `secret`; returns its name.
    pub fn add_key(&self, secret: &Secret, kdf: KdfParams) -> Result<String> {
        let master = self
            .master_key()
            .ok_or_else(|| Error::InvalidInput("the repository is not encrypted: it has no keys".into()))?;
        let kf = KeyFile::wrap(master, &self.config().id, secret, kdf)?;
        let bytes = kf.encode();
        let name = KeyFile::name_of(&bytes);
        self.backend().put(FileKind::Key, &name, &bytes)?;
        Ok(name)
    }

    /// Remove the key file `name` (a unique prefix will do). The last key, and the key this
    /// process opened the repository with, are refused: either would lock everyone out.
    pub fn remove_key(&self, name: &str) -> Result<String> {
        let keys = self.key_files()?;
        let full = unique_key(&keys, name)?;
        if Some(full.as_str()) == self.key_name() {
            return Err(Error::InvalidInput(format!(
                "key {} is the one in use; open the repository with another key to remove it",
                &full[..8]
            )));
        }
        if keys.iter().filter(|(n, k)| n != &full && k.is_ok()).count() == 0 {
            return Err(Error::InvalidInput("that is the last readable key; add another first".into()));
        }
        self.backend().delete(FileKind::Key, &full)?;
        Ok(full)
    }

    /// The ids of all snapshots (unordered; cheap: one directory listing).
    pub fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        Ok(self.backend().list(FileKind::Snapshot)?.iter().filter_map(|n| SnapshotId::from_hex(n).ok()).collect())
    }

    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let bytes = self.backend().get(FileKind::Snapshot, &id.to_hex())?;
        self.codec().decode_snapshot(id, bytes)
    }

    /// All readable snapshots, oldest first (ties by id). Snapshots removed while listing are
    /// skipped; damaged ones are skipped with a warning (once per process): see
    /// [`Repository::snapshots_and_damage`].
    pub fn snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        let (good, damaged) = self.snapshots_and_damage()?;
        for d in &damaged {
            warn_damaged_once(d);
        }
        Ok(good)
    }

    /// The readable snapshots (oldest first) and the damaged ones.
    pub fn snapshots_and_damage(&self) -> Result<(Vec<SnapshotEntry>, Vec<DamagedSnapshot>)> {
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for id in self.snapshot_ids()? {
            match self.load_snapshot(&id) {
                Ok(snapshot) => out.push(SnapshotEntry { id, snapshot }),
                Err(Error::NotFound(_)) => {}
                Err(e @ (Error::Corrupt { .. } | Error::UnsupportedVersion { .. })) => {
                    let bytes = self.backend().get(FileKind::Snapshot, &id.to_hex()).unwrap_or_default();
                    let bytes = self.codec().snapshot_plaintext(&id, bytes).unwrap_or_default();
                    damaged.push(DamagedSnapshot {
                        id,
                        path: self.file_path(FileKind::Snapshot, &id.to_hex()),
                        error: e.to_string(),
                        salvaged_tree: salvage_tree(&bytes),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        sort_snapshots(&mut out);
        Ok((out, damaged))
    }

    /// Find a snapshot by `latest` or an id prefix, optionally only among one host's. A prefix
    /// that names a damaged snapshot is an error that says so.
    pub fn find_snapshot(&self, spec: &str, host: Option<&str>) -> Result<SnapshotEntry> {
        let (all, damaged) = self.snapshots_and_damage()?;
        for d in &damaged {
            warn_damaged_once(d);
        }
        if spec != "latest" && !spec.is_empty() {
            let lower = spec.to_ascii_lowercase();
            let hit: Vec<&DamagedSnapshot> = damaged.iter().filter(|d| d.id.to_hex().starts_with(&lower)).collect();
            if !hit.is_empty() && !all.iter().any(|s| s.id.to_hex().starts_with(&lower)) && hit.len() == 1 {
                return Err(Error::corrupt(
                    format!("snapshot {} ({})", hit[0].id.short(), hit[0].path.display()),
                    hit[0].error.clone(),
                ));
            }
        }
        let mut candidates: Vec<&SnapshotEntry> =
            all.iter().filter(|s| host.is_none_or(|h| s.snapshot.host == h)).collect();
        if spec == "latest" {
            return candidates.pop().cloned().ok_or_else(|| {
                Error::NotFound(match host {
                    Some(h) => format!("snapshot of host {h:?}"),
                    None => "snapshot (the repository has none)".into(),
                })
            });
        }
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidInput(format!("{spec:?} is neither `latest` nor a snapshot id")));
        }
        let spec = spec.to_ascii_lowercase();
        candidates.retain(|s| s.id.to_hex().starts_with(&spec));
        match candidates.len() {
            0 => Err(Error::NotFound(format!("snapshot {spec}"))),
            1 => Ok(candidates[0].clone()),
            n => Err(Error::InvalidInput(format!("snapshot id prefix {spec} is ambiguous ({n} match)"))),
        }
    }

    /// Load the index, giving a repository that reads blobs.
    pub fn open_indexed(&self, caches: CacheSizes) -> Result<IndexedRepository> {
        let mut index = Index::default();
        index.refresh(self.backend(), self.codec())?;
        Ok(IndexedRepository {
            inner: Arc::new(IndexedInner {
                repo: self.clone(),
                index: RwLock::new(index),
                index_writer: PlMutex::new(0),
                refreshes: AtomicU64::new(0),
                chunks: ByteLru::new(caches.chunk_bytes),
                trees: ByteLru::new(caches.tree_bytes),
                groups: ByteLru::new(caches.group_bytes),
                group_loading: SingleFlight::default(),
                spill: OnceLock::new(),
                loading: SingleFlight::default(),
                recovered: PlMutex::new(Recovered::default()),
                #[cfg(test)]
                loads: std::sync::atomic::AtomicUsize::new(0),
                #[cfg(test)]
                group_opens: std::sync::atomic::AtomicUsize::new(0),
                #[cfg(test)]
                waiting_refreshers: std::sync::atomic::AtomicUsize::new(0),
            }),
        })
    }
}

/// A snapshot file that does not verify or decode.
#[derive(Clone, Debug)]
pub struct DamagedSnapshot {
    pub id: SnapshotId,
    /// The file.
    pub path: PathBuf,
    pub error: String,
    /// Its root tree, if the damaged bytes still name one (prune keeps what it reaches).
    pub salvaged_tree: Option<TreeId>,
}

/// The folder of every repository's local caches (see [`Repository::cache_dir`]):
/// `$REWIND_CACHE_DIR`, else `$XDG_CACHE_HOME/rewind`, else `~/.cache/rewind` (the home from
/// `$HOME`, else from the password database: a service without `HOME`); without a home, a
/// folder of the user's own in the temporary folder ([`private_folder`] refuses it if someone
/// else made it).
pub fn cache_root() -> PathBuf {
    let var = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    var("REWIND_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("rewind")))
        .or_else(|| std::env::home_dir().filter(|h| h.is_dir()).map(|d| d.join(".cache").join("rewind")))
        .unwrap_or_else(|| {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            std::env::temp_dir().join(format!("rewind-cache-{uid}"))
        })
}

/// Make `dir` (and missing parents) readable by this user only, or check that it is this
/// user's alone: a folder that holds plaintext (the catalog: every path of every snapshot) must
/// not be a symbolic link, another user's, or writable by group or others, and no folder above
/// it (as written, and where its links lead) may let another user swap it: one of another
/// user's (root's is fine), or one that others (or, if it is not the user's own, its group) may
/// write in without the sticky bit; below a sticky folder such as `/tmp`, the next folder must
/// be the user's or root's. Otherwise another user could plant a file beside ours (an SQLite
/// `-wal` hard-linked to one of theirs) or put a folder of theirs in its place. Nothing is
/// changed in a folder that exists: one that fails is refused with the reason.
pub fn private_folder(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let refuse = |p: &Path, why: String| {
        Err(Error::InvalidInput(format!(
            "{} {why}: the file catalog holds every path in the clear; use a folder of this user's alone (REWIND_CACHE_DIR, or --catalog)",
            p.display()
        )))
    };
    let m = std::fs::symlink_metadata(&dir).map_err(|e| Error::io(&dir, e))?;
    if m.file_type().is_symlink() {
        return refuse(&dir, "is a symbolic link".into());
    }
    if !m.is_dir() {
        return refuse(&dir, "is not a folder".into());
    }
    if m.uid() != uid {
        return refuse(&dir, format!("belongs to uid {}, not to this user ({uid})", m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return refuse(&dir, format!("may be written by others (mode {:o}; chmod go-w it)", m.mode() & 0o7777));
    }
    let real = std::fs::canonicalize(&dir).map_err(|e| Error::io(&dir, e))?;
    for path in [dir.as_path(), real.as_path()] {
        let mut child = path;
        while let Some(parent) = child.parent() {
            let pm = std::fs::metadata(parent).map_err(|e| Error::io(parent, e))?;
            if pm.uid() != uid && pm.uid() != 0 {
                return refuse(parent, format!("belongs to uid {}, who could swap the folders in it", pm.uid()));
            }
            // The user's own folder may be group-writable (a group of the user's own, under
            // umask 002); root's folders may not (2775 root:staff).
            let writers = if pm.uid() == uid && uid != 0 { 0o002 } else { 0o022 };
            if pm.mode() & writers != 0 {
                if pm.mode() & 0o1000 == 0 {
                    return refuse(parent, format!("may be written by others (mode {:o})", pm.mode() & 0o7777));
                }
                let cm = std::fs::symlink_metadata(child).map_err(|e| Error::io(child, e))?;
                if cm.uid() != uid && cm.uid() != 0 {
                    return refuse(child, format!("belongs to uid {}, in a folder everyone writes in", cm.uid()));
                }
            }
            child = parent;
        }
    }
    Ok(())
}

/// The master key from the first key file `secret` opens, and that file's name. Wrong secrets
/// cost the KDF's time per key file of the secret's kind, then one clear error.
fn unlock(backend: &dyn Backend, head: &ConfigHead, secret: &Secret) -> Result<(String, MasterKey)> {
    let names = backend.list(FileKind::Key)?;
    if names.is_empty() {
        return Err(Error::Key(format!(
            "the repository is encrypted but {}/{} holds no key file",
            backend.location(),
            FileKind::Key.relative_path("").trim_end_matches('/')
        )));
    }
    let mut damaged = Vec::new();
    for name in &names {
        let kf = match backend.get(FileKind::Key, name).and_then(|b| KeyFile::decode(&b)) {
            Ok(k) => k,
            Err(Error::NotFound(_)) => continue,
            Err(e) => {
                damaged.push(format!("{} ({e})", &name[..name.len().min(8)]));
                continue;
            }
        };
        if let Some(master) = kf.unwrap(&head.id, secret)? {
            return Ok((name.clone(), master));
        }
    }
    let kind = match secret {
        Secret::Password(_) => "wrong password",
        Secret::RawKey(_) => "wrong raw key",
    };
    let listed: Vec<&str> = names.iter().map(|n| &n[..n.len().min(8)]).collect();
    let mut msg = format!("{kind}: none of the repository's key files opens with it (keys: {})", listed.join(", "));
    if !damaged.is_empty() {
        msg.push_str(&format!("; damaged: {}", damaged.join(", ")));
    }
    Err(Error::Key(msg))
}

/// The one key file whose name starts with `prefix`.
fn unique_key(keys: &[(String, Result<KeyFile>)], prefix: &str) -> Result<String> {
    let hits: Vec<&String> = keys.iter().map(|(n, _)| n).filter(|n| n.starts_with(prefix)).collect();
    match hits.as_slice() {
        [one] if !prefix.is_empty() => Ok((*one).clone()),
        [] | [_] => {
            let all: Vec<&str> = keys.iter().map(|(n, _)| &n[..n.len().min(8)]).collect();
            Err(Error::NotFound(format!("key {prefix:?} (the keys are: {})", all.join(", "))))
        }
        _ => Err(Error::InvalidInput(format!("key prefix {prefix:?} is ambiguous ({} match)", hits.len()))),
    }
}

fn warn_damaged_once(d: &DamagedSnapshot) {
    static WARNED: Mutex<Option<HashSet<SnapshotId>>> = Mutex::new(None);
    let mut w = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if w.get_or_insert_with(HashSet::new).insert(d.id) {
        tracing::warn!(
            "snapshot {} ({}) is damaged and skipped: {}; `rewind forget {}` removes it",
            d.id.short(),
            d.path.display(),
            d.error,
            d.id.short()
        );
    }
}

/// The root tree a damaged manifest names, if one can still be read from it: the first
/// `"tree": "<64 hex>"`.
fn salvage_tree(bytes: &[u8]) -> Option<TreeId> {
    if let Ok(s) = serde_json::from_slice::<Snapshot>(bytes) {
        return Some(s.tree);
    }
    let text = String::from_utf8_lossy(bytes);
    let at = text.find("\"tree\"")?;
    let rest = &text[at + 6..];
    let start = rest.find('"')? + 1;
    TreeId::from_hex(rest.get(start..start + 64)?).ok()
}

pub(crate) fn sort_snapshots(v: &mut [SnapshotEntry]) {
    v.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
}

/// Budgets of the decompressed-blob caches.
#[derive(Clone, Copy, Debug)]
pub struct CacheSizes {
    pub chunk_bytes: usize,
    pub tree_bytes: usize,
    /// Opened groups of small blobs (version 4), a few 1 MiB groups by default: the members of
    /// a group read one after another open it once. 0 for a reader serving several users (the
    /// portal): a group holds other users' files, and that one of them was read lately must not
    /// show in how fast a user's own file comes.
    pub group_bytes: usize,
}

impl Default for CacheSizes {
    fn default() -> Self {
        CacheSizes { chunk_bytes: 64 << 20, tree_bytes: 32 << 20, group_bytes: 8 << 20 }
    }
}

/// Where a group lies: its pack and offset.
type GroupKey = (crate::format::PackId, u64);

/// The groups a [`GroupScope`] keeps, by where they lie; `None` outside a scope.
type ScopedGroups = Option<Vec<(GroupKey, Arc<Vec<u8>>)>>;

thread_local! {
    // The groups opened within the current [`GroupScope`] of this thread, last two.
    static SCOPED_GROUPS: std::cell::RefCell<ScopedGroups> = const { std::cell::RefCell::new(None) };
}

/// While it lives, the groups of small blobs this thread opens are kept for this thread alone
/// (the last two), whatever the repository's own budget (`CacheSizes::group_bytes`). For one
/// user's request in a reader that keeps no groups (the portal): a zip of a folder of small
/// files opens each group once, and what the request kept goes with it. Not `Send`.
pub struct GroupScope {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl GroupScope {
    pub fn enter() -> GroupScope {
        SCOPED_GROUPS.with_borrow_mut(|g| *g = Some(Vec::new()));
        GroupScope { _not_send: std::marker::PhantomData }
    }

    fn get(key: &GroupKey) -> Option<Arc<Vec<u8>>> {
        SCOPED_GROUPS.with_borrow(|g| g.as_ref()?.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    }

    fn keep(key: GroupKey, group: &Arc<Vec<u8>>) {
        SCOPED_GROUPS.with_borrow_mut(|g| {
            if let Some(g) = g.as_mut() {
                if g.len() >= 2 {
                    g.remove(0);
                }
                g.push((key, group.clone()));
            }
        });
    }
}

impl Drop for GroupScope {
    fn drop(&mut self) {
        SCOPED_GROUPS.with_borrow_mut(|g| *g = None);
    }
}

/// A repository with its index loaded: reads blobs, trees and file contents through bounded
/// caches. Cheap to clone; share it between threads.
#[derive(Clone)]
pub struct IndexedRepository {
    inner: Arc<IndexedInner>,
}

struct IndexedInner {
    repo: Repository,
    /// Read by every blob lookup; written only to swap in what a writer built outside it.
    index: RwLock<Index>,
    /// Taken by the index's writers (refresh, avoid, replace) while they read index files:
    /// they are serialised, readers never wait for their I/O. Holds the number of the last
    /// refresh that succeeded.
    index_writer: PlMutex<u64>,
    /// Refreshes begun: numbers them, so that callers coalesce.
    refreshes: AtomicU64,
    chunks: ByteLru<ChunkId, Vec<u8>>,
    trees: ByteLru<TreeId, Tree>,
    /// Groups of small blobs opened last (version 4), by where they are: the members of a
    /// group read one after another (a folder's files, a walk's trees) read and open it once.
    groups: ByteLru<GroupKey, Vec<u8>>,
    /// Groups being read and opened now: the readers of its other members wait for that.
    group_loading: SingleFlight<GroupKey, Option<Arc<Vec<u8>>>>,
    spill: OnceLock<crate::spill::Spill>,
    /// Chunks being read and decompressed now: a second caller of [`IndexedRepository::chunk`]
    /// waits for the first instead of doing the same work again (a prefetcher and the reader
    /// it runs ahead of often ask for one chunk at once).
    loading: SingleFlight<ChunkId, Arc<Vec<u8>>>,
    recovered: PlMutex<Recovered>,
    /// Chunks read from packs, for tests.
    #[cfg(test)]
    loads: std::sync::atomic::AtomicUsize,
    /// Groups read and opened, for tests.
    #[cfg(test)]
    group_opens: std::sync::atomic::AtomicUsize,
    /// Calls of `refresh_index` that have begun, for tests.
    #[cfg(test)]
    waiting_refreshers: std::sync::atomic::AtomicUsize,
}

/// Blobs found through the trailers of packs that no readable index file describes (an index
/// file is damaged or missing). Used for reading only: a backup never deduplicates against them
/// (such a pack may be a running backup's, not yet indexed).
#[derive(Default)]
struct Recovered {
    index: Index,
    scanned: crate::index::IdSet<crate::format::PackId>,
}

impl IndexedRepository {
    pub fn repo(&self) -> &Repository {
        &self.inner.repo
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        self.inner.repo.backend()
    }

    pub(crate) fn codec(&self) -> &Codec {
        self.inner.repo.codec()
    }

    pub(crate) fn with_index<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&self.inner.index.read())
    }

    pub(crate) fn replace_index(&self, index: Index) {
        let _writer = self.inner.index_writer.lock();
        *self.inner.index.write() = index;
    }

    /// Pick up index files written since opening (by a backup running beside us). The files are
    /// read with no lock on the index (lookups go on meanwhile), then swapped in. Callers at
    /// once share a refresh: one that begins after this call began is as good as our own.
    pub fn refresh_index(&self) -> Result<usize> {
        let asked = self.inner.refreshes.load(Ordering::SeqCst);
        #[cfg(test)]
        self.inner.waiting_refreshers.fetch_add(1, Ordering::SeqCst);
        let mut last_ok = self.inner.index_writer.lock();
        if *last_ok > asked {
            return Ok(0);
        }
        let this = self.inner.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
        let n = self.refresh_locked()?;
        *last_ok = this;
        Ok(n)
    }

    /// Read the new index files and swap them in; the caller holds `index_writer`.
    fn refresh_locked(&self) -> Result<usize> {
        let update = self.with_index(|i| i.known()).read(self.backend(), self.codec())?;
        Ok(self.inner.index.write().apply(update))
    }

    /// Load the whole index anew preferring copies outside `avoid`, and swap it in; the caller
    /// holds `index_writer`.
    fn reload_locked(&self, avoid: crate::index::IdSet<crate::format::PackId>) -> Result<()> {
        let fresh = Index::load(self.backend(), self.codec(), avoid)?;
        *self.inner.index.write() = fresh;
        Ok(())
    }

    /// Every blob the index names.
    pub fn blob_ids(&self) -> Vec<BlobId> {
        self.with_index(|i| i.blobs().map(|(id, _)| id).collect())
    }

    /// Number of blobs in the index.
    pub fn blob_count(&self) -> usize {
        self.with_index(|i| i.len())
    }

    pub fn contains(&self, id: BlobId) -> bool {
        self.with_index(|i| i.contains(&id))
    }

    /// Where a blob is; looks for new index files once, then in the trailers of packs no
    /// index file describes, before saying it is missing.
    pub fn locate(&self, id: BlobId) -> Result<Location> {
        if let Some(l) = self.with_index(|i| i.get(&id)) {
            return Ok(l);
        }
        self.refresh_index()?;
        if let Some(l) = self.with_index(|i| i.get(&id)) {
            return Ok(l);
        }
        if let Some(l) = self.recover(id)? {
            return Ok(l);
        }
        Err(Error::NotFound(format!("{} blob {} (not in the index)", blob::kind_name(id.kind), id.hash.to_hex())))
    }

    /// Look for a blob in the packs that no loaded index file describes, reading each such
    /// pack's trailer (or head copy) once.
    fn recover(&self, id: BlobId) -> Result<Option<Location>> {
        let mut rec = self.inner.recovered.lock();
        if let Some(l) = rec.index.get(&id) {
            return Ok(Some(l));
        }
        for name in self.backend().list(FileKind::Pack)? {
            let Ok(pack) = crate::format::PackId::from_hex(&name) else { continue };
            if rec.scanned.contains(&pack) || self.with_index(|i| i.has_pack(&pack)) {
                continue;
            }
            rec.scanned.insert(pack);
            match crate::index::read_pack_records(self.backend(), self.codec(), &pack) {
                Ok((len, blobs, _)) => rec.index.add_pack(&crate::format::IndexPack { pack, pack_len: len, blobs }),
                Err(e) => tracing::warn!("pack {} unreadable: {e}", pack.short()),
            }
        }
        Ok(rec.index.get(&id))
    }

    /// Prefer copies of blobs outside `packs` (condemned by a prune) from now on.
    pub(crate) fn avoid_packs(&self, packs: crate::index::IdSet<crate::format::PackId>) -> Result<()> {
        let _writer = self.inner.index_writer.lock();
        self.reload_locked(packs)
    }

    /// Index files skipped because they are damaged.
    pub fn damaged_index_files(&self) -> Vec<String> {
        self.with_index(|i| i.damaged_files().to_vec())
    }

    /// A pack the index named is gone: reload the index preferring other copies of its blobs.
    fn pack_missing(&self, pack: crate::format::PackId) -> Result<()> {
        let _writer = self.inner.index_writer.lock();
        let mut avoid = self.with_index(|i| i.avoided().clone());
        if !avoid.insert(pack) {
            return self.refresh_locked().map(|_| ());
        }
        self.reload_locked(avoid)
    }

    /// Read and verify one blob, bypassing the caches of blobs (a member of a group comes from
    /// the group if it was opened lately).
    pub fn read_blob(&self, id: BlobId) -> Result<Vec<u8>> {
        if let Some(loc) = self.location_cached(id)
            && let crate::format::Compression::Grouped { member } = loc.compression
        {
            let key = (loc.pack, loc.offset);
            let group = match GroupScope::get(&key).or_else(|| self.inner.groups.get(&key)) {
                Some(g) => Some(g),
                // One reader reads and opens it; the others asking meanwhile wait for that.
                None => self.inner.group_loading.run(key, || self.load_group(id, key))?,
            };
            if let Some(group) = group {
                GroupScope::keep(key, &group);
                return blob::member_of(self.codec(), &id, member, &group, loc.raw_len);
            }
        }
        let (loc, stored) = self.read_stored(id)?;
        if let crate::format::Compression::Grouped { member } = loc.compression {
            // Not through the groups a thread keeps (`blob::open`): only through this
            // repository's, whose budget its owner sets (CacheSizes::group_bytes).
            let group = self.open_group(id, stored)?;
            return blob::member_of(self.codec(), &id, member, &group, loc.raw_len);
        }
        blob::open_owned(self.codec(), &id, loc.compression, stored, loc.raw_len)
    }

    /// The group at `key` holding blob `id`, read, opened and kept; `None` if the blob is no
    /// longer there (a prune moved it: the caller reads it where it is now).
    fn load_group(&self, id: BlobId, key: GroupKey) -> Result<Option<Arc<Vec<u8>>>> {
        if let Some(g) = self.inner.groups.get(&key) {
            return Ok(Some(g));
        }
        let (loc, stored) = self.read_stored(id)?;
        if (loc.pack, loc.offset) != key || !matches!(loc.compression, crate::format::Compression::Grouped { .. }) {
            return Ok(None);
        }
        let group = Arc::new(self.open_group(id, stored)?);
        self.inner.groups.insert(key, group.clone(), group.len());
        Ok(Some(group))
    }

    /// A group's plaintext from its stored bytes (counted, for tests).
    fn open_group(&self, id: BlobId, stored: Vec<u8>) -> Result<Vec<u8>> {
        #[cfg(test)]
        self.inner.group_opens.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        blob::open_group(self.codec(), &id, stored)
    }

    /// A blob's stored (maybe compressed) bytes, unverified. If its pack is gone (a prune moved
    /// the blob), the index is reloaded and the read tried once more.
    pub(crate) fn read_stored(&self, id: BlobId) -> Result<(Location, Vec<u8>)> {
        let read = |loc: &Location| {
            self.backend().get_range(FileKind::Pack, &loc.pack.to_hex(), loc.offset, loc.stored_len as usize)
        };
        let mut loc = self.locate(id)?;
        let mut tries = 0;
        let stored = loop {
            match read(&loc) {
                // The pack is gone (a prune deleted it): reload the index, preferring other
                // copies, and read one of those.
                Err(Error::NotFound(_)) if tries < 3 => {
                    tries += 1;
                    // Usually the sweep has rewritten the index files already: one reload.
                    self.refresh_index()?;
                    let moved = self.locate(id)?;
                    if moved.pack == loc.pack {
                        // Between a sweep's deletions and its new index files: avoid the pack.
                        self.pack_missing(loc.pack)?;
                        loc = self.locate(id)?;
                    } else {
                        loc = moved;
                    }
                }
                r => break r?,
            }
        };
        if stored.len() != loc.stored_len as usize {
            return Err(Error::corrupt(format!("pack {}", loc.pack.to_hex()), "truncated"));
        }
        Ok((loc, stored))
    }

    /// Where the index says a blob is, without looking for new index files.
    pub(crate) fn location_cached(&self, id: BlobId) -> Option<Location> {
        self.with_index(|i| i.get(&id))
    }

    /// Keep decompressed chunks that leave the in-memory cache in `file` too, up to `capacity`
    /// bytes (see `spill.rs`): a private scratch file, usually already unlinked. Once only;
    /// later calls are ignored.
    pub fn set_chunk_spill(&self, file: std::fs::File, capacity: u64) {
        let _ = self.inner.spill.set(crate::spill::Spill::new(file, capacity));
    }

    /// A data chunk, through the caches: memory, then the spill file (checked against the id
    /// like a pack read: the file is not the repository), then the repository.
    pub fn chunk(&self, id: ChunkId) -> Result<Arc<Vec<u8>>> {
        if let Some(c) = self.inner.chunks.get(&id) {
            return Ok(c);
        }
        // Another caller loading it: its chunk; if that load failed, ours.
        self.inner.loading.run(id, || self.load_chunk(id))
    }

    /// Bring a chunk into the cache unless it is there or on its way: for prefetchers, which
    /// move on to the next chunk rather than wait for someone else's load (of that chunk: a
    /// member of a group being opened waits for the group, which it would read again else).
    pub fn prefetch_chunk(&self, id: ChunkId) -> Result<()> {
        if self.inner.chunks.get(&id).is_some() {
            return Ok(());
        }
        self.inner.loading.try_run(id, || self.load_chunk(id)).transpose().map(|_| ())
    }

    /// Load a chunk, as the one caller doing so: from the spill file, or from its pack.
    fn load_chunk(&self, id: ChunkId) -> Result<Arc<Vec<u8>>> {
        // Loaded by the previous load between the caller's look and its turn?
        if let Some(c) = self.inner.chunks.get(&id) {
            return Ok(c);
        }
        let spill = self.inner.spill.get();
        if let Some(raw) = spill.and_then(|s| s.get(&id)) {
            if self.codec().id(&raw) == id.0 {
                let data = Arc::new(raw);
                self.inner.chunks.insert(id, data.clone(), data.len());
                return Ok(data);
            }
            tracing::warn!("chunk {} in the spill file is damaged; reading it from the repository", id.0.to_hex());
            spill.expect("read from it").forget(&id);
        }
        #[cfg(test)]
        self.inner.loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = Arc::new(self.read_blob(id.into())?);
        self.keep_chunk(id, data.clone());
        Ok(data)
    }

    /// Keep a chunk read and verified by the caller: in the memory cache, and in the spill file
    /// when there is one.
    pub(crate) fn keep_chunk(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        self.inner.chunks.insert(id, data.clone(), data.len());
        if let Some(s) = self.inner.spill.get() {
            s.put(id, data);
        }
    }

    #[cfg(test)]
    pub(crate) fn group_opens(&self) -> usize {
        self.inner.group_opens.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn loads(&self) -> usize {
        self.inner.loads.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn settle_spill(&self) {
        if let Some(s) = self.inner.spill.get() {
            s.settle();
        }
    }

    /// Whether a chunk is in the cache now.
    pub fn chunk_cached(&self, id: &ChunkId) -> bool {
        self.cached_chunk(id).is_some()
    }

    /// A chunk if it is in the in-memory cache now: never reads or decompresses, so it may be
    /// called where blocking is not allowed.
    pub fn cached_chunk(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.inner.chunks.get(id)
    }

    /// Whether a directory is in the cache now (reading it would not decompress).
    pub fn tree_cached(&self, id: &TreeId) -> bool {
        self.inner.trees.get(id).is_some()
    }

    /// A directory, through the cache.
    pub fn tree(&self, id: TreeId) -> Result<Arc<Tree>> {
        if let Some(t) = self.inner.trees.get(&id) {
            return Ok(t);
        }
        let bytes = match self.repo().tree_cache() {
            None => self.read_blob(id.into())?,
            Some(dir) => self.read_tree_cached(id, dir)?,
        };
        let tree = Arc::new(Tree::decode(&bytes)?);
        // Decoded nodes take a few times their encoded size.
        self.inner.trees.insert(id, tree.clone(), bytes.len() * 3 + 64);
        Ok(tree)
    }

    /// A tree of a remote repository: its stored (sealed, compressed) bytes are kept in the cache
    /// folder (`trees/<2 hex>/<id>`, with their compression and length ahead of them), so that
    /// the next process reads it from the local disk. What comes from there is opened and checked
    /// against the id like what comes from the pack; a copy that fails is replaced.
    fn read_tree_cached(&self, id: TreeId, dir: &Path) -> Result<Vec<u8>> {
        if let Some((compression, raw_len, stored)) = crate::local_cache::read_tree(dir, &id.into()) {
            match blob::open_owned(self.codec(), &id.into(), compression, stored, raw_len) {
                Ok(b) => return Ok(b),
                Err(e) => tracing::warn!("local cache: tree {} is damaged ({e}); reading it again", id.short()),
            }
        }
        if let crate::format::Compression::Grouped { .. } = self.locate(id.into())?.compression {
            // Read through the groups kept; kept in the cache folder on its own.
            let raw = self.read_blob(id.into())?;
            let level = self.repo().config().compression.level;
            crate::local_cache::keep_tree_raw(dir, self.codec(), &id.into(), &raw, level);
            return Ok(raw);
        }
        let (loc, stored) = self.read_stored(id.into())?;
        crate::local_cache::keep_tree(dir, &id.into(), loc.compression, loc.raw_len, &stored);
        blob::open_owned(self.codec(), &id.into(), loc.compression, stored, loc.raw_len)
    }

    /// The node at `path` (components separated by `/`, leading `/` optional) in a snapshot; the
    /// empty path is the snapshot's root directory.
    pub fn node_at(&self, snapshot: &Snapshot, path: &[u8]) -> Result<Node> {
        let mut node = Node::new(Vec::new(), NodeKind::Dir);
        node.mode = 0o755;
        node.subtree = Some(snapshot.tree);
        node.mtime =
            crate::format::Time { sec: snapshot.time.as_second(), nsec: snapshot.time.subsec_nanosecond() as u32 };
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if comp == b"." || comp == b".." {
                return Err(Error::InvalidInput("`.` and `..` are not allowed in snapshot paths".into()));
            }
            let Some(sub) = node.subtree.filter(|_| node.is_dir()) else {
                return Err(Error::NotFound(format!("{} (not a directory on the way)", String::from_utf8_lossy(path))));
            };
            let tree = self.tree(sub)?;
            node = tree
                .find(comp)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("{:?} in snapshot", String::from_utf8_lossy(path))))?;
        }
        Ok(node)
    }

    /// A reader of a file node's content.
    pub fn open_file(&self, node: &Node) -> Result<FileReader> {
        if node.kind != NodeKind::File {
            return Err(Error::InvalidInput(format!("{} is not a file", node.name_lossy())));
        }
        let mut chunks = Vec::with_capacity(node.content.len());
        let mut offset = 0u64;
        for id in &node.content {
            let loc = self.locate((*id).into())?;
            chunks.push(ChunkSpan { offset, len: loc.raw_len, id: *id });
            offset += u64::from(loc.raw_len);
        }
        Ok(FileReader { repo: self.clone(), chunks, size: offset, blocks: None })
    }
}

/// Where the pieces of a file that is not stored as chunks come from: a file inside a disk
/// image, cut into blocks of its own (`view::image`). Block ids are private to the source.
pub(crate) trait Blocks: Send + Sync {
    /// Block `span`'s bytes, loaded once by concurrent callers and kept in the source's cache.
    fn load(&self, span: &ChunkSpan) -> Result<Arc<Vec<u8>>>;
    /// Block `span`'s bytes if cached now.
    fn cached(&self, span: &ChunkSpan) -> Option<Arc<Vec<u8>>>;
    /// Load block `span` unless it is cached or on its way.
    fn prefetch(&self, span: &ChunkSpan) -> Result<()>;
}

/// One chunk's place in a file.
#[derive(Clone, Copy, Debug)]
pub struct ChunkSpan {
    pub offset: u64,
    pub len: u32,
    pub id: ChunkId,
}

/// Reads a file's bytes at any offset, chunk by chunk through the cache. A file inside a disk
/// image reads the same way: its "chunks" are blocks of the file read through the image (and so
/// through the image file's own chunks), kept in a cache of their own.
#[derive(Clone)]
pub struct FileReader {
    repo: IndexedRepository,
    chunks: Vec<ChunkSpan>,
    size: u64,
    blocks: Option<Arc<dyn Blocks>>,
}

impl FileReader {
    /// A reader of a file that is not stored as chunks: `size` bytes in blocks of `block`
    /// bytes, block `i` named `id(i)` for the source's cache.
    pub(crate) fn of_blocks(
        repo: IndexedRepository,
        size: u64,
        block: u32,
        id: impl Fn(u64) -> ChunkId,
        blocks: Arc<dyn Blocks>,
    ) -> FileReader {
        let chunks = (0..size.div_ceil(u64::from(block)))
            .map(|i| {
                let offset = i * u64::from(block);
                ChunkSpan { offset, len: (size - offset).min(u64::from(block)) as u32, id: id(i) }
            })
            .collect();
        FileReader { repo, chunks, size, blocks: Some(blocks) }
    }

    fn load(&self, span: &ChunkSpan) -> Result<Arc<Vec<u8>>> {
        match &self.blocks {
            Some(b) => b.load(span),
            None => self.repo.chunk(span.id),
        }
    }

    /// Whether chunk `i` is in the cache now (reading it costs a copy only).
    pub fn is_cached(&self, i: usize) -> bool {
        let Some(span) = self.chunks.get(i) else { return true };
        match &self.blocks {
            Some(b) => b.cached(span).is_some(),
            None => self.repo.chunk_cached(&span.id),
        }
    }

    /// The content's length (the sum of its chunks).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunks(&self) -> &[ChunkSpan] {
        &self.chunks
    }

    /// Index of the chunk holding byte `offset`.
    pub fn chunk_index(&self, offset: u64) -> Option<usize> {
        if offset >= self.size {
            return None;
        }
        Some(self.chunks.partition_point(|c| c.offset + u64::from(c.len) <= offset))
    }

    /// Fill `buf` from `offset`; returns the bytes read (short only at the end of the file).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut done = 0;
        let Some(mut i) = self.chunk_index(offset) else { return Ok(0) };
        while done < buf.len() && i < self.chunks.len() {
            let span = self.chunks[i];
            let data = self.load(&span)?;
            let pos = offset + done as u64;
            let start = (pos - span.offset) as usize;
            let n = (data.len() - start).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[start..start + n]);
            done += n;
            i += 1;
        }
        Ok(done)
    }

    /// Load chunk `i` into the cache (for read-ahead).
    pub fn warm(&self, i: usize) -> Result<()> {
        match (self.chunks.get(i), &self.blocks) {
            (Some(span), Some(b)) => b.prefetch(span),
            (Some(span), None) => self.repo.prefetch_chunk(span.id),
            (None, _) => Ok(()),
        }
    }

    /// Bytes `[offset, end)` as far as they lie in the chunk holding `offset`: that chunk
    /// (through the cache, shared, not copied) and the range of it to use. The one way the
    /// mount and the portal slice file contents; a chunk whose length is not the index's is
    /// `Corrupt`, never short or long bytes.
    pub fn piece(&self, offset: u64, end: u64) -> Result<Piece> {
        let span = self.span_at(offset)?;
        let data = self.load(&span)?;
        slice_chunk(span, data, offset, end)
    }

    /// [`FileReader::piece`] if its chunk is in the in-memory cache now, else `None`: never
    /// reads or decompresses, so it may be called where blocking is not allowed.
    pub fn cached_piece(&self, offset: u64, end: u64) -> Option<Result<Piece>> {
        let span = match self.span_at(offset) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let data = match &self.blocks {
            Some(b) => b.cached(&span)?,
            None => self.repo.cached_chunk(&span.id)?,
        };
        Some(slice_chunk(span, data, offset, end))
    }

    fn span_at(&self, offset: u64) -> Result<ChunkSpan> {
        let i = self
            .chunk_index(offset)
            .ok_or_else(|| Error::InvalidInput(format!("offset {offset} is past the end ({} bytes)", self.size)))?;
        Ok(self.chunks[i])
    }

    /// The read-ahead plan, pure: the chunks after chunk `last` worth loading ahead of a
    /// sequential reader, `budget` bytes of them at most, none starting at or after `end`.
    pub fn plan_ahead(&self, last: usize, budget: u64, end: u64) -> std::ops::Range<usize> {
        let first = (last + 1).min(self.chunks.len());
        let mut want = first;
        let mut bytes = 0u64;
        while want < self.chunks.len() && bytes < budget && self.chunks[want].offset < end {
            bytes += u64::from(self.chunks[want].len);
            want += 1;
        }
        first..want
    }
}

/// A chunk and the range of it a read uses.
pub type Piece = (Arc<Vec<u8>>, std::ops::Range<usize>);

fn slice_chunk(span: ChunkSpan, data: Arc<Vec<u8>>, offset: u64, end: u64) -> Result<Piece> {
    if data.len() != span.len as usize {
        return Err(Error::corrupt(format!("chunk {}", span.id.0.to_hex()), "its length differs from the index"));
    }
    let from = (offset - span.offset) as usize;
    let to = (end.min(span.offset + u64::from(span.len)).max(offset) - span.offset) as usize;
    Ok((data, from..to))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use crate::{BackupOptions, BackupProgress, CacheSizes, ChunkerParams, CompressionParams, Repository, backup};

    /// Readers asking for one chunk at once share one read and decompression, and a prefetch
    /// neither waits for a load under way nor repeats one.
    #[test]
    fn concurrent_readers_of_a_chunk_load_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        // One large chunk that takes a while to decompress, so the readers overlap.
        let text: Vec<u8> = (0..300_000u32).flat_map(|i| format!("{} ", i % 9973).into_bytes()).collect();
        let text = &text[..1 << 20];
        std::fs::write(src.join("f"), text).unwrap();
        let chunker = ChunkerParams { min_size: 1 << 20, avg_size: 4 << 20, max_size: 16 << 20 };
        let repo =
            Repository::init(&dir.path().join("repo"), chunker, CompressionParams::default(), crate::NewKey::test())
                .unwrap();
        let repo = repo.open_indexed(CacheSizes::default()).unwrap();
        let opts = BackupOptions { paths: vec![src.clone()], host: "h".into(), ..BackupOptions::default() };
        let snap = backup(&repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap();
        let node = repo.node_at(&snap.snapshot, src.join("f").as_os_str().as_encoded_bytes()).unwrap();
        let reader = repo.open_file(&node).unwrap();
        assert_eq!(reader.chunks().len(), 1);
        let id = reader.chunks()[0].id;
        // A fresh repository: nothing cached from the backup.
        let repo = repo.repo().open_indexed(CacheSizes::default()).unwrap();
        let start = Arc::new(Barrier::new(8));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (repo, start) = (repo.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    repo.chunk(id).unwrap()
                })
            })
            .collect();
        for r in readers {
            assert_eq!(r.join().unwrap().as_slice(), text);
        }
        assert_eq!(repo.loads(), 1);

        // A prefetch does not wait for a load someone else has begun, nor repeat it.
        let repo = repo.repo().open_indexed(CacheSizes::default()).unwrap();
        let turn = repo.inner.loading.try_lead(id).unwrap();
        repo.prefetch_chunk(id).unwrap();
        assert_eq!(repo.loads(), 0);
        drop(turn);
        repo.prefetch_chunk(id).unwrap();
        repo.prefetch_chunk(id).unwrap();
        assert_eq!(repo.loads(), 1);
        assert_eq!(repo.cached_chunk(&id).unwrap().as_slice(), text);
    }

    /// A small repository with one backup, opened with its index.
    fn small_repo(dir: &std::path::Path) -> crate::IndexedRepository {
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"some bytes").unwrap();
        let repo = Repository::init(
            &dir.join("repo"),
            ChunkerParams::default(),
            CompressionParams::default(),
            crate::NewKey::test(),
        )
        .unwrap();
        let repo = repo.open_indexed(CacheSizes::default()).unwrap();
        let opts = BackupOptions { paths: vec![src], host: "h".into(), ..BackupOptions::default() };
        backup(&repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap();
        repo.repo().open_indexed(CacheSizes::default()).unwrap()
    }

    /// Poll until `f` gives something (an event the test cannot be told of otherwise).
    fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(t) = f() {
                return t;
            }
            assert!(std::time::Instant::now() < deadline, "waited 60 s in vain");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Run `f` on a thread of its own; its result, or a failure if it does not return (it
    /// waits for a lock that the test holds up on purpose).
    fn returns<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()).unwrap());
        rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or_else(|_| panic!("{what} is blocked"))
    }

    /// A refresh reads index files with no lock on the index (lookups go on while it reads),
    /// and the misses that pile up meanwhile share one more refresh instead of one each.
    #[test]
    fn index_refresh_reads_off_lock_and_coalesces() {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::OpenOptionsExt;
        use std::sync::atomic::Ordering;

        let dir = tempfile::tempdir().unwrap();
        let repo = small_repo(dir.path());
        let blobs = repo.blob_count();
        // An "index file" that blocks whoever reads it until the test writes to it.
        let fifo = repo.repo().file_path(crate::backend::FileKind::Index, &"f".repeat(64));
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let first = std::thread::spawn({
            let repo = repo.clone();
            move || repo.refresh_index()
        });
        // The refresh is reading the file once its open (as a reader) lets ours in.
        let writer =
            wait_for(|| std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo).ok());
        let r = repo.clone();
        assert_eq!(returns("a lookup during a refresh", move || r.blob_count()), blobs);
        // Seven misses meanwhile: they wait for the refresh under way, then share one.
        let missing: crate::format::BlobId = crate::format::ChunkId(crate::format::Hash::of(b"nowhere")).into();
        let misses: Vec<_> = (0..7)
            .map(|_| {
                let repo = repo.clone();
                std::thread::spawn(move || repo.locate(missing))
            })
            .collect();
        wait_for(|| (repo.inner.waiting_refreshers.load(Ordering::SeqCst) == 8).then_some(()));
        drop(writer);
        assert_eq!(first.join().unwrap().unwrap(), 1, "the blocking file, read empty (damaged)");
        for m in misses {
            assert!(matches!(m.join().unwrap(), Err(crate::Error::NotFound(_))));
        }
        assert_eq!(repo.inner.refreshes.load(Ordering::SeqCst), 2, "the first refresh and one for all misses");
        assert_eq!(repo.blob_count(), blobs);
    }

    /// A panic while the index is locked does not make every later lookup fail.
    #[test]
    fn a_panic_under_the_index_lock_does_not_poison_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = small_repo(dir.path());
        let blobs = repo.blob_count();
        let r = repo.clone();
        let swap = std::thread::spawn(move || {
            let _index = r.inner.index.write();
            panic!("a swap fails")
        });
        assert!(swap.join().is_err());
        assert_eq!(repo.blob_count(), blobs);
        repo.refresh_index().unwrap();
        let r = repo.clone();
        let id = crate::format::ChunkId(crate::format::Hash::of(b"nowhere"));
        let load = std::thread::spawn(move || {
            r.inner.loading.run(id, || -> crate::Result<Arc<Vec<u8>>> { panic!("a load fails") })
        });
        assert!(load.join().is_err());
        assert!(repo.chunk(crate::format::ChunkId(crate::format::Hash::of(b"nowhere"))).is_err());
    }

    /// Pieces are slices of one chunk, clipped to it; the plan counts whole chunks after the
    /// last one read, within the budget and before the end.
    #[test]
    fn pieces_and_the_read_ahead_plan() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let mut data = vec![0u8; 600_000];
        blake3::Hasher::new().update(b"seed").finalize_xof().fill(&mut data);
        std::fs::write(src.join("f"), &data).unwrap();
        let chunker = ChunkerParams { min_size: 4096, avg_size: 16384, max_size: 65536 };
        let repo =
            Repository::init(&dir.path().join("repo"), chunker, CompressionParams::default(), crate::NewKey::test())
                .unwrap()
                .open_indexed(CacheSizes::default())
                .unwrap();
        let opts = BackupOptions { paths: vec![src.clone()], host: "h".into(), ..BackupOptions::default() };
        let snap = backup(&repo, &opts, &BackupProgress::default(), &|p, e| panic!("{}: {e}", p.display())).unwrap();
        let repo = repo.repo().open_indexed(CacheSizes::default()).unwrap();
        let node = repo.node_at(&snap.snapshot, src.join("f").as_os_str().as_encoded_bytes()).unwrap();
        let r = repo.open_file(&node).unwrap();
        let c = r.chunks().to_vec();
        assert!(c.len() > 5);
        assert!(r.cached_piece(c[1].offset + 10, c[1].offset + 20).is_none(), "not read yet");
        let (chunk, range) = r.piece(c[1].offset + 10, c[3].offset).unwrap();
        assert_eq!(
            &chunk[range.clone()],
            &data[c[1].offset as usize + 10..c[2].offset as usize],
            "clipped to the chunk"
        );
        let (_, again) = r.cached_piece(c[1].offset + 10, c[1].offset + 20).unwrap().unwrap();
        assert_eq!(again, 10..20);
        assert!(matches!(r.piece(r.size(), r.size() + 1), Err(crate::Error::InvalidInput(_))));
        let len = |i: usize| u64::from(c[i].len);
        assert_eq!(r.plan_ahead(0, 0, r.size()), 1..1);
        assert_eq!(r.plan_ahead(0, 1, r.size()), 1..2, "a chunk started is a chunk loaded");
        assert_eq!(r.plan_ahead(0, len(1) + len(2), r.size()), 1..3);
        assert_eq!(r.plan_ahead(0, u64::MAX, c[3].offset), 1..3, "none from the end on");
        assert_eq!(r.plan_ahead(c.len() - 1, u64::MAX, r.size()), c.len()..c.len());
    }
}
