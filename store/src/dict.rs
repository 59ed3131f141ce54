//! Compression dictionaries (repository version 3): a zstd dictionary trained from the first
//! backup's small blobs, so that a small file compresses with what its neighbours taught zstd
//! instead of from nothing. Each is a file `dicts/<id>` of its own, sealed like an index file and
//! never deleted (a blob compressed with one can live in any pack, through any repack); a blob
//! records "zstd with a dictionary" and its zstd frame names the dictionary by zstd's dictionary
//! id. The table is loaded lazily, on the first blob that needs it, and again when a frame names
//! a dictionary it lacks (another writer trained one after this process opened the repository).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use zstd::zstd_safe::{DDict, get_dict_id_from_frame};

use crate::backend::{Backend, FileKind};
use crate::error::{Error, Result};

/// Blobs of at most this many bytes are compressed with the dictionary: whole small files and
/// the tails of larger ones, where zstd alone has too little context.
pub(crate) const SMALL_BLOB: usize = 128 * 1024;
/// Samples gathered before training: enough for a good dictionary, little enough to train in a
/// fraction of a second.
pub(crate) const TRAIN_BYTES: usize = 8 << 20;
/// Fewer sample bytes than this (a small first backup) train no dictionary yet.
pub(crate) const TRAIN_MIN_BYTES: usize = 1 << 20;
/// The largest dictionary trained (zstd's default is 110 KiB; twice that measured ~5% smaller
/// on real source trees).
pub(crate) const MAX_DICT: usize = 224 * 1024;

/// One dictionary, ready to decompress with.
pub(crate) struct Dict {
    /// Its file's name in `dicts/`.
    pub name: String,
    /// zstd's dictionary id, which frames compressed with it carry.
    pub zstd_id: u32,
    pub bytes: Vec<u8>,
    pub ddict: DDict<'static>,
}

impl Dict {
    /// Parse a dictionary's bytes: zstd's magic, a nonzero dictionary id, and a table zstd
    /// accepts.
    pub fn new(name: String, bytes: Vec<u8>) -> std::result::Result<Dict, String> {
        if bytes.len() < 8 || bytes[..4] != [0x37, 0xa4, 0x30, 0xec] {
            return Err("not a zstd dictionary".into());
        }
        let zstd_id = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if zstd_id == 0 {
            return Err("dictionary id 0".into());
        }
        let ddict = DDict::try_create(&bytes).ok_or("zstd refuses the dictionary")?;
        Ok(Dict { name, zstd_id, bytes, ddict })
    }
}

/// The dictionaries of a repository, shared by every clone of its codec.
#[derive(Default)]
pub(crate) struct Dicts {
    table: RwLock<HashMap<u32, Arc<Dict>>>,
    /// Dictionary files that did not open, by name, with why: named in the error of a blob
    /// that needs a dictionary the table lacks.
    damaged: RwLock<Vec<(String, String)>>,
    source: OnceLock<Arc<dyn Backend>>,
    loading: Mutex<()>,
}

impl Dicts {
    pub fn set_source(&self, backend: Arc<dyn Backend>) {
        let _ = self.source.set(backend);
    }

    pub fn insert(&self, d: Dict) -> Arc<Dict> {
        let d = Arc::new(d);
        self.table.write().entry(d.zstd_id).or_insert(d).clone()
    }

    pub fn get(&self, zstd_id: u32) -> Option<Arc<Dict>> {
        self.table.read().get(&zstd_id).cloned()
    }

    /// The dictionary new blobs are compressed with: of several (writers that trained one at
    /// once), the one with the smallest name, so that every writer picks the same.
    pub fn preferred(&self) -> Option<Arc<Dict>> {
        self.table.read().values().min_by(|a, b| a.name.cmp(&b.name)).cloned()
    }

    pub fn damaged(&self) -> Vec<(String, String)> {
        self.damaged.read().clone()
    }

    /// Read the dictionary files not loaded yet. `open` turns a file into its dictionary bytes
    /// (the codec: authenticated and checked against its name).
    pub fn load(&self, open: impl Fn(&str, Vec<u8>) -> Result<Vec<u8>>) -> Result<()> {
        let Some(backend) = self.source.get() else { return Ok(()) };
        let _one = self.loading.lock();
        let known: Vec<String> = self.table.read().values().map(|d| d.name.clone()).collect();
        let mut damaged = Vec::new();
        for name in backend.list(FileKind::Dict)? {
            if known.contains(&name) {
                continue;
            }
            let opened = backend.get(FileKind::Dict, &name).and_then(|b| open(&name, b));
            match opened.map(|b| Dict::new(name.clone(), b)) {
                Ok(Ok(d)) => {
                    self.insert(d);
                }
                Ok(Err(e)) => damaged.push((name, e)),
                Err(Error::NotFound(_)) => {}
                Err(e) => {
                    tracing::warn!("dictionary {name} is damaged: {e}");
                    damaged.push((name, e.to_string()));
                }
            }
        }
        *self.damaged.write() = damaged;
        Ok(())
    }

    /// The dictionary a zstd frame names, loading the repository's dictionaries if needed.
    /// `what` names the blob for the error.
    pub fn for_frame(
        &self,
        frame: &[u8],
        what: impl Fn() -> String,
        open: impl Fn(&str, Vec<u8>) -> Result<Vec<u8>>,
    ) -> Result<Arc<Dict>> {
        let Some(id) = get_dict_id_from_frame(frame) else {
            return Err(Error::corrupt(what(), "compressed with a dictionary but its frame names none"));
        };
        let id = id.get();
        if let Some(d) = self.get(id) {
            return Ok(d);
        }
        self.load(open)?;
        if let Some(d) = self.get(id) {
            return Ok(d);
        }
        let damaged = self.damaged();
        let detail = if damaged.is_empty() {
            format!("compressed with dictionary {id:08x}, which the repository does not have")
        } else {
            let list: Vec<String> = damaged.iter().map(|(n, e)| format!("dictionary {n}: {e}")).collect();
            format!("compressed with dictionary {id:08x}, not among the readable ones; damaged: {}", list.join("; "))
        };
        Err(Error::corrupt(what(), detail))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::codec::Codec;
    use crate::crypto::{Crypto, MasterKey};
    use crate::format::{BlobId, Compression};
    use crate::testing::{back_up, repo_in};
    use crate::{CacheSizes, IndexedRepository, Repository};

    /// Many small text files that share words and lines, as source trees do: more than enough
    /// to train a dictionary on.
    pub(crate) fn small_texts(dir: &Path, files: usize) {
        let words = ["fn", "let", "match", "Some", "None", "Result", "impl", "self", "return", "where", "pub", "use"];
        let mut x = 19u64;
        for f in 0..files {
            let sub = dir.join(format!("d{}", f % 7));
            std::fs::create_dir_all(&sub).unwrap();
            let mut text = String::new();
            for line in 0..(60 + f % 90) {
                text.push_str(&format!("    // line {line} of file {f}\n    "));
                for _ in 0..10 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    text.push_str(words[(x >> 33) as usize % words.len()]);
                    text.push(' ');
                }
                text.push('\n');
            }
            std::fs::write(sub.join(format!("f{f}.rs")), text).unwrap();
        }
    }

    fn reopen(repo: &IndexedRepository) -> IndexedRepository {
        Repository::open(repo.repo().local_path().unwrap(), Some(&crate::Secret::password("test")))
            .unwrap()
            .open_indexed(CacheSizes::default())
            .unwrap()
    }

    /// Blobs compressed with a dictionary: alone, or in a group whose frame names one.
    fn dict_blobs(repo: &IndexedRepository) -> Vec<BlobId> {
        let with_dict = |id: &BlobId| match repo.locate(*id).unwrap().compression {
            Compression::ZstdDict => true,
            Compression::Grouped { .. } => {
                let (_, stored) = repo.read_stored(*id).unwrap();
                let frame = repo.codec().open_group(stored, String::new).unwrap();
                zstd::zstd_safe::get_dict_id_from_frame(&frame).is_some()
            }
            _ => false,
        };
        repo.blob_ids().into_iter().filter(with_dict).collect()
    }

    #[test]
    fn dictionary_files_round_trip_and_are_bound_to_their_names() {
        let dict = {
            let dir = tempfile::tempdir().unwrap();
            small_texts(dir.path(), 400);
            let samples: Vec<Vec<u8>> = walk(dir.path());
            zstd::dict::from_samples(&samples, 16 * 1024).unwrap()
        };
        for codec in [Codec::plain(), Codec::encrypted(Crypto::Encrypted(Box::new(MasterKey::random())))] {
            let (name, file) = codec.encode_dict(&dict);
            assert_eq!(codec.decode_dict(&name, file.clone()).unwrap(), dict);
            let other = "0".repeat(64);
            assert!(codec.decode_dict(&other, file.clone()).unwrap_err().is_corrupt());
            let mut bad = file.clone();
            let n = bad.len() / 2;
            bad[n] ^= 1;
            let err = codec.decode_dict(&name, bad).unwrap_err();
            assert!(err.is_corrupt() && err.to_string().contains(&name), "{err}");
        }
        assert!(Dict::new("x".into(), b"not a dictionary".to_vec()).is_err());
    }

    fn walk(dir: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(std::fs::read(&p).unwrap()) }
        }
        out
    }

    /// A backup into a new repository trains a dictionary from its small files, stores it
    /// sealed in `dicts/`, and compresses small blobs with it; every file reads back the same in
    /// a process that opens the repository afresh, and the repository is smaller than the same
    /// backup without the dictionary.
    #[test]
    fn small_files_compress_with_a_trained_dictionary_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        small_texts(&src, 700);
        let repo = repo_in(dir.path());
        assert!(repo.repo().config().has_dictionaries());
        let snap = back_up(&repo, &src);
        let dicts = repo.backend().list(FileKind::Dict).unwrap();
        assert_eq!(dicts.len(), 1, "{dicts:?}");
        let fresh = reopen(&repo);
        let compressed = dict_blobs(&fresh);
        assert!(compressed.len() > 600, "{} blobs with the dictionary", compressed.len());
        for id in &compressed {
            fresh.read_blob(*id).unwrap();
        }
        let root = fresh.node_at(&snap.snapshot, src.to_str().unwrap().as_bytes()).unwrap();
        assert!(root.subtree.is_some());
        let node = fresh.node_at(&snap.snapshot, src.join("d3/f3.rs").to_str().unwrap().as_bytes()).unwrap();
        let reader = fresh.open_file(&node).unwrap();
        let mut buf = vec![0u8; node.size as usize];
        assert_eq!(reader.read_at(0, &mut buf).unwrap(), buf.len());
        assert_eq!(buf, std::fs::read(src.join("d3/f3.rs")).unwrap());
        // A second backup uses the same dictionary and trains none.
        std::fs::write(
            src.join("d1/extra.rs"),
            b"fn main() { let x = Some(1); match x { Some(v) => v, None => 0 }; }\n".repeat(20),
        )
        .unwrap();
        back_up(&fresh, &src);
        assert_eq!(fresh.backend().list(FileKind::Dict).unwrap(), dicts);
    }

    /// A damaged dictionary makes every blob compressed with it an integrity error that names
    /// the dictionary, never wrong bytes; blobs without it still read.
    #[test]
    fn a_damaged_dictionary_is_an_integrity_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        small_texts(&src, 700);
        std::fs::write(src.join("big.bin"), vec![7u8; 300_000]).unwrap();
        let repo = repo_in(dir.path());
        back_up(&repo, &src);
        let name = repo.backend().list(FileKind::Dict).unwrap().pop().unwrap();
        let path = repo.repo().file_path(FileKind::Dict, &name);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len() / 3;
        bytes[n] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let fresh = reopen(&repo);
        let compressed = dict_blobs(&fresh);
        assert!(!compressed.is_empty());
        for id in &compressed {
            let err = fresh.read_blob(*id).unwrap_err();
            assert!(err.is_corrupt(), "{err}");
            assert!(err.to_string().contains(&format!("dictionary {name}")), "{err}");
        }
        let others: Vec<BlobId> = fresh.blob_ids().into_iter().filter(|id| !compressed.contains(id)).collect();
        assert!(!others.is_empty());
        for id in others {
            fresh.read_blob(id).unwrap();
        }
        let report = crate::maintenance::check(fresh.repo(), false, &Default::default()).unwrap();
        assert!(report.errors.iter().any(|e| e.contains(&format!("dictionary {name}"))), "{:?}", report.errors);
        // Gone altogether: the same, saying the repository lacks it.
        std::fs::remove_file(&path).unwrap();
        let err = reopen(&repo).read_blob(compressed[0]).unwrap_err();
        assert!(err.is_corrupt() && err.to_string().contains("does not have"), "{err}");
    }

    /// Small files are stored in groups (version 4). A reader opens a group once for the members
    /// it reads one after another; a reader that keeps no groups (the portal's, which serves
    /// several users: a group holds other users' files) opens it for each, so how fast a file
    /// comes does not tell whether another in its group was read lately.
    #[test]
    fn members_of_a_group_read_through_kept_groups_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        small_texts(&src, 300);
        let repo = repo_in(dir.path());
        back_up(&repo, &src);
        let path = repo.repo().local_path().unwrap().to_path_buf();
        let open = |group_bytes| {
            Repository::open(&path, Some(&crate::Secret::password("test")))
                .unwrap()
                .open_indexed(CacheSizes { group_bytes, ..CacheSizes::default() })
                .unwrap()
        };
        let (keeping, keeping_none) = (open(8 << 20), open(0));
        // Three members of one group.
        let mut by_group: std::collections::HashMap<_, Vec<BlobId>> = Default::default();
        for id in keeping.blob_ids() {
            let loc = keeping.locate(id).unwrap();
            if let Compression::Grouped { .. } = loc.compression {
                by_group.entry((loc.pack, loc.offset)).or_default().push(id);
            }
        }
        let members = by_group.into_values().find(|m| m.len() >= 3).expect("a group of three or more");
        for r in [&keeping, &keeping_none] {
            for id in &members[..3] {
                assert_eq!(r.codec().id(&r.read_blob(*id).unwrap()), id.hash);
            }
        }
        assert_eq!(keeping.group_opens(), 1);
        assert_eq!(keeping_none.group_opens(), 3);
        // Within a scope of its own (one request), the reader that keeps none opens it once,
        // and nothing stays after the scope.
        {
            let _scope = crate::GroupScope::enter();
            for id in &members[..3] {
                keeping_none.read_blob(*id).unwrap();
            }
        }
        assert_eq!(keeping_none.group_opens(), 4);
        keeping_none.read_blob(members[0]).unwrap();
        assert_eq!(keeping_none.group_opens(), 5);
    }

    /// A first backup too small to train on stores its small blobs without a dictionary, and
    /// a later, larger one trains it.
    #[test]
    fn a_small_first_backup_trains_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        small_texts(&src, 20);
        let repo = repo_in(dir.path());
        back_up(&repo, &src);
        assert!(repo.backend().list(FileKind::Dict).unwrap().is_empty());
        assert!(dict_blobs(&repo).is_empty());
        small_texts(&src, 700);
        back_up(&repo, &src);
        assert_eq!(repo.backend().list(FileKind::Dict).unwrap().len(), 1);
        assert!(!dict_blobs(&reopen(&repo)).is_empty());
    }
}
