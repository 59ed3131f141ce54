//! Every persisted type of the repository, and its encoding. `store/FORMAT.md` mirrors this file:
//! change one, change the other, and bump [`FORMAT_VERSION`] when old readers would misread new
//! files.
//!
//! Binary files (packs, index files) start with an 8-byte magic and a little-endian `u32` version;
//! JSON files (config, snapshots) carry `"magic"` and `"version"` fields; tree blobs start with a
//! version byte.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The newest repository format this build reads and writes: 2, encrypted (see `codec.rs`).
/// Version 1, plaintext, is read and written too (`init --insecure-no-encryption`).
pub const FORMAT_VERSION: u32 = 2;
/// The newest repository (config) version: 3 is version 2's objects plus compression
/// dictionaries (`dicts/`, blobs compressed with one); 4 adds groups of small blobs compressed
/// together. Versions 1 to 3 are read and written as they are; a rewind that knows only an
/// older version refuses a newer repository as too new instead of misreading its blobs.
pub const REPOSITORY_VERSION: u32 = 4;
/// The version of the plaintext layouts this file encodes (packs, index files, configs).
pub(crate) const V1: u32 = 1;

pub(crate) const PACK_MAGIC: &[u8; 8] = b"RWNDPACK";
pub(crate) const PACK_TRAILER_MAGIC: &[u8; 8] = b"RWNDPTRL";
/// The copy of a pack's records right after its header (packs written since 2026-12).
pub(crate) const PACK_HEAD_MAGIC: &[u8; 8] = b"RWNDPHDR";
/// The pack header: magic and version.
pub(crate) const PACK_HEADER_LEN: usize = 12;
/// The fixed part of the head copy: magic, records length, count, BLAKE3 of the records.
pub(crate) const PACK_HEAD_FIXED_LEN: usize = 8 + 4 + 4 + 32;
pub(crate) const INDEX_MAGIC: &[u8; 8] = b"RWNDINDX";
pub(crate) const TREE_VERSION: u8 = 1;

// ---------------------------------------------------------------------------------------------
// Ids

/// A 32-byte BLAKE3 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| Error::InvalidInput(format!("not a 64-digit hex id: {s:?}")))?;
        Ok(Hash(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&self.to_hex()) } else { self.0.serialize(s) }
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Hash::from_hex(&s).map_err(serde::de::Error::custom)
        } else {
            Ok(Hash(<[u8; 32]>::deserialize(d)?))
        }
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Hash);

        impl $name {
            pub fn to_hex(&self) -> String {
                self.0.to_hex()
            }
            /// The first 8 hex digits, as shown to people.
            pub fn short(&self) -> String {
                self.0.to_hex()[..8].to_string()
            }
            pub fn from_hex(s: &str) -> Result<Self> {
                Hash::from_hex(s).map($name)
            }
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0 .0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0.to_hex())
            }
        }
    };
}

id_type!(
    /// A data chunk: BLAKE3 of its uncompressed bytes.
    ChunkId
);
id_type!(
    /// A directory: BLAKE3 of its encoded tree blob.
    TreeId
);
id_type!(
    /// A pack file: BLAKE3 of the whole file.
    PackId
);
id_type!(
    /// A snapshot manifest: BLAKE3 of the manifest file.
    SnapshotId
);
id_type!(
    /// An index file: BLAKE3 of the whole file.
    IndexId
);

/// What a blob in a pack holds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
}

impl BlobKind {
    pub(crate) fn from_u8(v: u8) -> Option<BlobKind> {
        match v {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            _ => None,
        }
    }
}

/// A blob as the index and packs name it: its kind and its hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct BlobId {
    pub kind: BlobKind,
    pub hash: Hash,
}

impl From<ChunkId> for BlobId {
    fn from(id: ChunkId) -> Self {
        BlobId { kind: BlobKind::Data, hash: id.0 }
    }
}

impl From<TreeId> for BlobId {
    fn from(id: TreeId) -> Self {
        BlobId { kind: BlobKind::Tree, hash: id.0 }
    }
}

/// How a blob's bytes are stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compression {
    None,
    Zstd,
    /// zstd with one of the repository's dictionaries (version 3), named by the frame's
    /// dictionary id.
    ZstdDict,
    /// The `member`th blob of a group of small blobs compressed together (version 4): the
    /// stored bytes are the whole group's (FORMAT.md, "Groups").
    Grouped {
        member: u16,
    },
}

impl Compression {
    /// The code in records (and in the tree cache's copies): 0 none, 1 zstd, 2 zstd with a
    /// dictionary, 3 grouped (with the member's number in the record's next two bytes).
    pub(crate) fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::ZstdDict => 2,
            Compression::Grouped { .. } => 3,
        }
    }

    /// The member's number of a grouped blob, else 0.
    pub(crate) fn member(self) -> u16 {
        match self {
            Compression::Grouped { member } => member,
            _ => 0,
        }
    }

    pub(crate) fn from_code(code: u8, member: u16) -> Option<Compression> {
        match (code, member) {
            (0, 0) => Some(Compression::None),
            (1, 0) => Some(Compression::Zstd),
            (2, 0) => Some(Compression::ZstdDict),
            (3, member) => Some(Compression::Grouped { member }),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config

/// `REPO/config`, JSON: what a repository is. In version 2 its parameters are sealed (see
/// [`Config::encode_sealed`]); the in-memory form is the same.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Config {
    pub magic: String,
    pub version: u32,
    pub id: Hash,
    pub created: jiff::Timestamp,
    pub chunker: ChunkerParams,
    pub compression: CompressionParams,
    /// Packs are closed once they reach this many bytes.
    pub pack_size: u64,
    /// How objects are protected (version 2: always AES-256-GCM).
    #[serde(default, skip_serializing_if = "Encryption::is_none")]
    pub encryption: Encryption,
}

/// The protection of a repository's objects.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// Version 1: plaintext objects, BLAKE3 ids.
    #[default]
    None,
    /// Version 2: AES-256-GCM sealed objects, keyed ids.
    Aes256Gcm,
}

impl Encryption {
    pub fn is_none(&self) -> bool {
        *self == Encryption::None
    }
}

/// What every config says in the clear: enough to know which repository it is and how to open
/// it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigHead {
    pub magic: String,
    pub version: u32,
    pub id: Hash,
    #[serde(default)]
    pub encryption: Encryption,
}

impl ConfigHead {
    pub fn decode(bytes: &[u8]) -> Result<ConfigHead> {
        let head: ConfigHead = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("config", e.to_string()))?;
        if head.magic != CONFIG_MAGIC {
            return Err(Error::corrupt("config", format!("magic is {:?}, not {CONFIG_MAGIC:?}", head.magic)));
        }
        if head.version == 0 || head.version > REPOSITORY_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "repository".into(),
                found: head.version,
                supported: REPOSITORY_VERSION,
            });
        }
        let consistent = match head.version {
            V1 => head.encryption == Encryption::None,
            _ => head.encryption == Encryption::Aes256Gcm,
        };
        if !consistent {
            return Err(Error::corrupt(
                "config",
                format!("version {} with encryption {:?}", head.version, head.encryption),
            ));
        }
        Ok(head)
    }
}

/// The sealed part of a version 2 config.
#[derive(Serialize, Deserialize)]
struct SealedParams {
    chunker: ChunkerParams,
    compression: CompressionParams,
    pack_size: u64,
}

/// A version 2 config file.
#[derive(Serialize, Deserialize)]
struct ConfigFileV2 {
    magic: String,
    version: u32,
    id: Hash,
    created: jiff::Timestamp,
    encryption: Encryption,
    /// Base64 of the sealed [`SealedParams`].
    sealed: String,
}

fn config_aad(id: &Hash) -> Vec<u8> {
    let mut a = b"rewind v2 config\0".to_vec();
    a.extend_from_slice(&id.0);
    a
}

pub(crate) const CONFIG_MAGIC: &str = "rewind-repository";
pub(crate) const SNAPSHOT_MAGIC: &str = "rewind-snapshot";

/// FastCDC (2020) parameters, normalization level 1, gear seed 0.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// Chosen by measurement on the bench corpus, see FORMAT.md.
    fn default() -> Self {
        ChunkerParams { min_size: 128 * 1024, avg_size: 512 * 1024, max_size: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020 as f;
        let (min, avg, max) = (self.min_size as usize, self.avg_size as usize, self.max_size as usize);
        let ok = (f::MINIMUM_MIN..=f::MINIMUM_MAX).contains(&min)
            && (f::AVERAGE_MIN..=f::AVERAGE_MAX).contains(&avg)
            && (f::MAXIMUM_MIN..=f::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok { Ok(()) } else { Err(Error::InvalidInput(format!("chunker sizes out of range: {self:?}"))) }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompressionParams {
    /// Always "zstd" in version 1.
    pub algorithm: Algorithm,
    pub level: i32,
}

/// The compression algorithm of blobs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Zstd,
}

impl Default for CompressionParams {
    fn default() -> Self {
        CompressionParams { algorithm: Algorithm::Zstd, level: 3 }
    }
}

impl Config {
    /// A new config: version 2 (encrypted) unless `encryption` is none (version 1).
    pub fn new(chunker: ChunkerParams, compression: CompressionParams, encryption: Encryption) -> Config {
        let mut seed = [0u8; 32];
        crate::crypto::fill_random(&mut seed);
        Config {
            magic: CONFIG_MAGIC.into(),
            version: if encryption.is_none() { V1 } else { REPOSITORY_VERSION },
            id: Hash(seed),
            created: jiff::Timestamp::now(),
            chunker,
            compression,
            pack_size: 16 * 1024 * 1024,
            encryption,
        }
    }

    /// Whether blobs may be compressed with a dictionary (version 3).
    pub fn has_dictionaries(&self) -> bool {
        self.version >= 3
    }

    /// Whether small blobs are stored in groups compressed together (version 4).
    pub fn has_groups(&self) -> bool {
        self.version >= 4
    }

    /// A version 1 config.
    pub fn decode(bytes: &[u8]) -> Result<Config> {
        let head = ConfigHead::decode(bytes)?;
        if head.version != V1 {
            return Err(Error::InvalidInput(
                "the repository is encrypted: its key is needed to read its config".into(),
            ));
        }
        let config: Config = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("config", e.to_string()))?;
        config.chunker.validate()?;
        Ok(config)
    }

    /// A version 2 config, opened with the repository's key.
    pub fn decode_sealed(bytes: &[u8], crypto: &crate::crypto::Crypto) -> Result<Config> {
        let head = ConfigHead::decode(bytes)?;
        if head.version == V1 {
            return Config::decode(bytes);
        }
        let file: ConfigFileV2 = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("config", e.to_string()))?;
        use base64::Engine;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&file.sealed)
            .map_err(|_| Error::corrupt("config", "sealed part is not base64"))?;
        let plain = crypto.open(&config_aad(&file.id), sealed, || "config".into())?;
        let p: SealedParams = serde_json::from_slice(&plain).map_err(|e| Error::corrupt("config", e.to_string()))?;
        p.chunker.validate()?;
        Ok(Config {
            magic: file.magic,
            version: file.version,
            id: file.id,
            created: file.created,
            chunker: p.chunker,
            compression: p.compression,
            pack_size: p.pack_size,
            encryption: file.encryption,
        })
    }

    /// The config file of a version 1 repository.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("config serializes");
        v.push(b'\n');
        v
    }

    /// The config file of a version 2 repository: its parameters sealed.
    pub fn encode_sealed(&self, crypto: &crate::crypto::Crypto) -> Vec<u8> {
        use base64::Engine;
        let params = SealedParams { chunker: self.chunker, compression: self.compression, pack_size: self.pack_size };
        let plain = serde_json::to_vec(&params).expect("params serialize");
        let file = ConfigFileV2 {
            magic: self.magic.clone(),
            version: self.version,
            id: self.id,
            created: self.created,
            encryption: self.encryption,
            sealed: base64::engine::general_purpose::STANDARD.encode(crypto.seal(&config_aad(&self.id), &plain)),
        };
        let mut v = serde_json::to_vec_pretty(&file).expect("config serializes");
        v.push(b'\n');
        v
    }
}

pub(crate) fn check_version(what: &str, found: u32) -> Result<()> {
    if found == 0 || found > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion { what: what.into(), found, supported: FORMAT_VERSION });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Snapshots

/// `REPO/snapshots/<id>`, JSON. Written last, after everything it references is durable.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub magic: String,
    pub version: u32,
    /// When the backup started.
    pub time: jiff::Timestamp,
    pub host: String,
    /// Absolute source paths, as given (normalized).
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The root directory; it holds each source path under its absolute name.
    pub tree: TreeId,
    #[serde(default)]
    pub parent: Option<SnapshotId>,
    pub summary: Summary,
    /// The snapshot this one is a copy of, when `copy` had to name its content anew (between
    /// repositories with different keys): how a second copy knows it is there already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<SnapshotId>,
}

/// Counts of a backup, kept in its snapshot.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unchanged: u64,
    pub dirs: u64,
    pub others: u64,
    /// Files that could not be read or changed while read: left out of the snapshot.
    pub errors: u64,
    /// Bytes of file content read from the source.
    pub bytes_read: u64,
    /// Total size of the files in the snapshot.
    pub bytes_total: u64,
    /// Uncompressed bytes of blobs new to the repository.
    pub bytes_added: u64,
    /// Bytes written to new packs.
    pub bytes_stored: u64,
    pub blobs_added: u64,
    pub duration_ms: u64,
}

impl Snapshot {
    pub fn decode(bytes: &[u8]) -> Result<Snapshot> {
        #[derive(Deserialize)]
        struct Head {
            magic: String,
            version: u32,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("snapshot", e.to_string()))?;
        if head.magic != SNAPSHOT_MAGIC {
            return Err(Error::corrupt("snapshot", format!("magic is {:?}", head.magic)));
        }
        check_version("snapshot", head.version)?;
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt("snapshot", e.to_string()))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("snapshot serializes");
        v.push(b'\n');
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Trees

/// Kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
}

impl NodeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
            NodeKind::BlockDevice => "blockdev",
            NodeKind::CharDevice => "chardev",
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "socket",
        }
    }

    /// The file-type bits of `st_mode`.
    pub fn mode_bits(&self) -> u32 {
        match self {
            NodeKind::File => libc::S_IFREG,
            NodeKind::Dir => libc::S_IFDIR,
            NodeKind::Symlink => libc::S_IFLNK,
            NodeKind::BlockDevice => libc::S_IFBLK,
            NodeKind::CharDevice => libc::S_IFCHR,
            NodeKind::Fifo => libc::S_IFIFO,
            NodeKind::Socket => libc::S_IFSOCK,
        }
    }
}

impl FromStr for NodeKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "file" => NodeKind::File,
            "dir" => NodeKind::Dir,
            "symlink" => NodeKind::Symlink,
            "blockdev" => NodeKind::BlockDevice,
            "chardev" => NodeKind::CharDevice,
            "fifo" => NodeKind::Fifo,
            "socket" => NodeKind::Socket,
            _ => return Err(Error::InvalidInput(format!("unknown kind {s:?}"))),
        })
    }
}

/// A point in time with nanoseconds, as `stat` gives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// An extended attribute (POSIX ACLs are kept as their `system.posix_acl_*` attributes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One entry of a directory. Hard links are files with `nlink > 1`; every link carries the full
/// chunk list (deduplicated, so free) and the same `(dev, inode)`, which is how restore and the
/// mount join them again. That keeps every directory blob independent of every other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Any bytes but `/` and NUL.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits, including setuid, setgid and sticky (no file-type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Owner names at backup time, empty when unknown.
    pub user: String,
    pub group: String,
    pub size: u64,
    pub mtime: Time,
    pub ctime: Time,
    pub dev: u64,
    pub inode: u64,
    pub nlink: u64,
    /// Device number of block and character devices.
    pub rdev: u64,
    /// Symlink target.
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
    /// File content, in order.
    pub content: Vec<ChunkId>,
    /// Directory content.
    pub subtree: Option<TreeId>,
    pub xattrs: Vec<Xattr>,
}

/// What a file or symlink holds, as one short id: the first 8 bytes of the BLAKE3 of its chunk
/// ids in order (a file) or of its target (a symlink). Same content, same id, in any snapshot
/// of one repository (chunk ids are keyed per repository when encrypted). Shown as 16 hex
/// digits of those bytes read as a little-endian number; the catalog stores that number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContentId(pub i64);

impl ContentId {
    pub fn to_hex(&self) -> String {
        format!("{:016x}", self.0 as u64)
    }
}

impl std::fmt::Display for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Node {
    /// The node's [`ContentId`]; `None` for anything but files and symlinks.
    pub fn content_id(&self) -> Option<ContentId> {
        let mut h = blake3::Hasher::new();
        match self.kind {
            NodeKind::File => {
                for c in &self.content {
                    h.update(c.as_bytes());
                }
            }
            NodeKind::Symlink => {
                h.update(&self.target);
            }
            _ => return None,
        }
        Some(ContentId(i64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))))
    }

    pub fn new(name: Vec<u8>, kind: NodeKind) -> Node {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            size: 0,
            mtime: Time::default(),
            ctime: Time::default(),
            dev: 0,
            inode: 0,
            nlink: 1,
            rdev: 0,
            target: Vec::new(),
            content: Vec::new(),
            subtree: None,
            xattrs: Vec::new(),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Dir
    }

    /// The name as text, lossy.
    pub fn name_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }

    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs.iter().find(|x| x.name == name).map(|x| x.value.as_slice())
    }
}

/// A directory: its entries sorted by name bytes, names unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Version byte, then the postcard encoding of the node list.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TREE_VERSION];
        postcard::to_io(&self.nodes, &mut out).expect("tree encodes into a Vec");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Tree> {
        let (&version, rest) = bytes.split_first().ok_or_else(|| Error::corrupt("tree", "empty blob"))?;
        if version == 0 || u32::from(version) > u32::from(TREE_VERSION) {
            return Err(Error::UnsupportedVersion {
                what: "tree".into(),
                found: version.into(),
                supported: TREE_VERSION.into(),
            });
        }
        let (nodes, rest): (Vec<Node>, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| Error::corrupt("tree", e.to_string()))?;
        if !rest.is_empty() {
            return Err(Error::corrupt("tree", "trailing bytes"));
        }
        for pair in nodes.windows(2) {
            if pair[0].name >= pair[1].name {
                return Err(Error::corrupt("tree", "entries not sorted by name"));
            }
        }
        for n in &nodes {
            if n.name.is_empty() || n.name.contains(&b'/') || n.name.contains(&0) || n.name == b"." || n.name == b".." {
                return Err(Error::corrupt("tree", format!("invalid entry name {:?}", n.name_lossy())));
            }
        }
        Ok(Tree { nodes })
    }

    pub fn id(encoded: &[u8]) -> TreeId {
        TreeId(Hash::of(encoded))
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &self.nodes[i])
    }
}

// ---------------------------------------------------------------------------------------------
// Pack trailer and index records

/// Where a blob lives inside a pack: one record of a pack trailer or an index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    pub id: BlobId,
    pub compression: Compression,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// Encoded size of a [`BlobRecord`].
pub(crate) const RECORD_LEN: usize = 1 + 1 + 2 + 8 + 4 + 4 + 32;
/// Encoded size of the fixed pack footer.
pub(crate) const PACK_FOOTER_LEN: usize = 4 + 4 + 32 + 4 + 8;

impl BlobRecord {
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.id.kind as u8);
        out.push(self.compression.code());
        out.extend_from_slice(&self.compression.member().to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.id.hash.0);
    }

    pub(crate) fn decode(b: &[u8]) -> Result<BlobRecord> {
        if b.len() != RECORD_LEN {
            return Err(Error::corrupt("blob record", "wrong length"));
        }
        let kind = BlobKind::from_u8(b[0]).ok_or_else(|| Error::corrupt("blob record", format!("kind {}", b[0])))?;
        let member = u16::from_le_bytes([b[2], b[3]]);
        let compression = Compression::from_code(b[1], member)
            .ok_or_else(|| Error::corrupt("blob record", format!("compression {} (member {member})", b[1])))?;
        let offset = u64::from_le_bytes(b[4..12].try_into().expect("8 bytes"));
        let stored_len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes"));
        let raw_len = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[20..52]);
        Ok(BlobRecord { id: BlobId { kind, hash: Hash(hash) }, compression, offset, stored_len, raw_len })
    }
}

/// Encode a pack trailer: the records, then the fixed footer
/// `records_len u32 | count u32 | BLAKE3(records) | version u32 | "RWNDPTRL"`.
pub(crate) fn encode_pack_trailer(records: &[BlobRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * RECORD_LEN + PACK_FOOTER_LEN);
    for r in records {
        r.encode_into(&mut out);
    }
    let hash = Hash::of(&out);
    let len = out.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&hash.0);
    out.extend_from_slice(&V1.to_le_bytes());
    out.extend_from_slice(PACK_TRAILER_MAGIC);
    out
}

/// Parse a pack footer: how many bytes of records precede it.
pub(crate) fn decode_pack_footer(footer: &[u8]) -> Result<(u32, u32, Hash)> {
    if footer.len() != PACK_FOOTER_LEN {
        return Err(Error::corrupt("pack", "file too short for a trailer"));
    }
    if &footer[44..52] != PACK_TRAILER_MAGIC {
        return Err(Error::corrupt("pack", "trailer magic missing (truncated or not a pack)"));
    }
    let version = u32::from_le_bytes(footer[40..44].try_into().expect("4 bytes"));
    check_version("pack", version)?;
    if version != V1 {
        return Err(Error::corrupt("pack", format!("a version {version} pack in a version 1 repository")));
    }
    let len = u32::from_le_bytes(footer[0..4].try_into().expect("4 bytes"));
    let count = u32::from_le_bytes(footer[4..8].try_into().expect("4 bytes"));
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&footer[8..40]);
    if len as usize != count as usize * RECORD_LEN {
        return Err(Error::corrupt("pack", "trailer length and count disagree"));
    }
    Ok((len, count, Hash(hash)))
}

/// Parse the records of a pack trailer, checked against the footer's hash.
pub(crate) fn decode_pack_records(records: &[u8], count: u32, hash: Hash) -> Result<Vec<BlobRecord>> {
    if Hash::of(records) != hash {
        return Err(Error::corrupt("pack", "trailer hash mismatch"));
    }
    if records.len() != count as usize * RECORD_LEN {
        return Err(Error::corrupt("pack", "trailer length"));
    }
    records.chunks_exact(RECORD_LEN).map(BlobRecord::decode).collect()
}

/// Encode the copy of a pack's records that follows its header:
/// `"RWNDPHDR" | records_len u32 | count u32 | BLAKE3(records) | records`. With it a pack whose
/// trailer is damaged (or cut off) can still be indexed.
pub(crate) fn encode_pack_head(records: &[BlobRecord]) -> Vec<u8> {
    let mut recs = Vec::with_capacity(records.len() * RECORD_LEN);
    for r in records {
        r.encode_into(&mut recs);
    }
    let mut out = Vec::with_capacity(PACK_HEAD_FIXED_LEN + recs.len());
    out.extend_from_slice(PACK_HEAD_MAGIC);
    out.extend_from_slice(&(recs.len() as u32).to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&Hash::of(&recs).0);
    out.extend_from_slice(&recs);
    out
}

/// Parse the fixed part of a pack's head copy: `None` if the pack has none (written before the
/// head copy existed), else the length and count of the records that follow, and their hash.
pub(crate) fn decode_pack_head_fixed(fixed: &[u8]) -> Result<Option<(u32, u32, Hash)>> {
    if fixed.len() < PACK_HEAD_FIXED_LEN || &fixed[..8] != PACK_HEAD_MAGIC {
        return Ok(None);
    }
    let len = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    let count = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes"));
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&fixed[16..48]);
    if len as usize != count as usize * RECORD_LEN {
        return Err(Error::corrupt("pack", "head copy length and count disagree"));
    }
    Ok(Some((len, count, Hash(hash))))
}

/// A whole pack's records from its bytes: the trailer, or, if that is damaged, the head copy.
/// Returns the records and whether the head copy was used. Every record is checked to lie
/// between the header (and head copy) and the trailer.
pub fn decode_pack_records_of(pack: &[u8]) -> Result<(Vec<BlobRecord>, bool)> {
    let len = pack.len() as u64;
    let from_trailer = || -> Result<Vec<BlobRecord>> {
        let footer = pack.get(pack.len().saturating_sub(PACK_FOOTER_LEN)..).unwrap_or(&[]);
        let (rec_len, count, hash) = decode_pack_footer(footer)?;
        let start = pack
            .len()
            .checked_sub(PACK_FOOTER_LEN + rec_len as usize)
            .filter(|&s| s >= PACK_HEADER_LEN)
            .ok_or_else(|| Error::corrupt("pack", "trailer longer than the pack"))?;
        decode_pack_records(&pack[start..start + rec_len as usize], count, hash)
    };
    let trailer = from_trailer();
    let (records, head) = match trailer {
        Ok(r) => (r, false),
        Err(e) => {
            let fixed = pack.get(PACK_HEADER_LEN..).unwrap_or(&[]);
            match decode_pack_head_fixed(fixed)? {
                None => return Err(e),
                Some((rec_len, count, hash)) => {
                    let start = PACK_HEADER_LEN + PACK_HEAD_FIXED_LEN;
                    let recs = pack
                        .get(start..start + rec_len as usize)
                        .ok_or_else(|| Error::corrupt("pack", "head copy longer than the pack"))?;
                    (decode_pack_records(recs, count, hash)?, true)
                }
            }
        }
    };
    check_record_bounds(&records, len)?;
    Ok((records, head))
}

/// Every record must lie after the header and head copy and before the trailer (both copies
/// list the same records, so their lengths are known from either).
pub(crate) fn check_record_bounds(records: &[BlobRecord], pack_len: u64) -> Result<()> {
    let recs = (records.len() * RECORD_LEN) as u64;
    let min = PACK_HEADER_LEN as u64;
    let max = pack_len.checked_sub(recs + PACK_FOOTER_LEN as u64).ok_or_else(|| Error::corrupt("pack", "too short"))?;
    for r in records {
        if r.offset < min || r.offset.checked_add(u64::from(r.stored_len)).is_none_or(|end| end > max) {
            return Err(Error::corrupt("pack", "a blob lies outside the pack's data"));
        }
    }
    Ok(())
}

/// One pack's entry in an index file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPack {
    pub pack: PackId,
    /// The pack file's length, so `check` can tell a truncated pack.
    pub pack_len: u64,
    pub blobs: Vec<BlobRecord>,
}

/// An index file: `"RWNDINDX" | version u32 | pack count u32 | packs... | BLAKE3(all before)`,
/// each pack `id[32] | pack_len u64 | blob count u32 | records`.
pub(crate) fn encode_index(packs: &[IndexPack]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&V1.to_le_bytes());
    out.extend_from_slice(&encode_index_body(packs));
    let hash = Hash::of(&out);
    out.extend_from_slice(&hash.0);
    out
}

/// `pack count u32 | packs...`: what an index file says, in either version.
pub(crate) fn encode_index_body(packs: &[IndexPack]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + packs.iter().map(|p| 44 + p.blobs.len() * RECORD_LEN).sum::<usize>());
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(p.pack.as_bytes());
        out.extend_from_slice(&p.pack_len.to_le_bytes());
        out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
        for b in &p.blobs {
            b.encode_into(&mut out);
        }
    }
    out
}

pub(crate) fn decode_index(bytes: &[u8]) -> Result<Vec<IndexPack>> {
    let bad = |d: &str| Error::corrupt("index file", d.to_string());
    if bytes.len() < 16 + 32 || &bytes[..8] != INDEX_MAGIC {
        return Err(bad("missing magic"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    check_version("index file", version)?;
    if version != V1 {
        return Err(bad("an encrypted index file in an unencrypted repository"));
    }
    let (body, hash) = bytes.split_at(bytes.len() - 32);
    if Hash::of(body).0 != hash {
        return Err(bad("checksum mismatch"));
    }
    decode_index_body(&body[12..], false)
}

/// The packs of an index body; `padded`: zeros may follow them (version 2 pads).
pub(crate) fn decode_index_body(body: &[u8], padded: bool) -> Result<Vec<IndexPack>> {
    let bad = |d: &str| Error::corrupt("index file", d.to_string());
    let count =
        body.get(..4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).ok_or_else(|| bad("truncated"))?
            as usize;
    let mut pos = 4;
    let mut packs = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let head = body.get(pos..pos + 44).ok_or_else(|| bad("truncated"))?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&head[..32]);
        let pack_len = u64::from_le_bytes(head[32..40].try_into().expect("8 bytes"));
        let n = u32::from_le_bytes(head[40..44].try_into().expect("4 bytes")) as usize;
        pos += 44;
        let recs = n.checked_mul(RECORD_LEN).and_then(|l| body.get(pos..pos + l)).ok_or_else(|| bad("truncated"))?;
        pos += n * RECORD_LEN;
        let blobs = recs.chunks_exact(RECORD_LEN).map(BlobRecord::decode).collect::<Result<_>>()?;
        packs.push(IndexPack { pack: PackId(Hash(id)), pack_len, blobs });
    }
    let rest = &body[pos..];
    let only_padding = padded && rest.iter().all(|&b| b == 0);
    if !rest.is_empty() && !only_padding {
        return Err(bad("trailing bytes"));
    }
    Ok(packs)
}

// ---------------------------------------------------------------------------------------------
// Locks and prune's pending records

/// `REPO/locks/<name>`, JSON: who holds a lock. Rewritten whole (a new version of the same
/// object) every [`crate::lock::REFRESH`] while held.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub purpose: String,
    pub host: String,
    pub pid: u32,
    /// When the lock was taken.
    pub time: jiff::Timestamp,
    /// When the lock was last refreshed (absent in locks of older versions: `time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<jiff::Timestamp>,
}

impl LockInfo {
    pub fn decode(bytes: &[u8]) -> Result<LockInfo> {
        let info: LockInfo = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("lock", e.to_string()))?;
        if info.purpose.is_empty() {
            return Err(Error::corrupt("lock", "no purpose"));
        }
        Ok(info)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("lock info serializes")
    }

    /// The last time the holder said it was alive, by its own clock.
    pub fn last_refresh(&self) -> jiff::Timestamp {
        self.refreshed.unwrap_or(self.time).max(self.time)
    }
}

pub(crate) const PENDING_MAGIC: &str = "rewind-prune-pending";
/// Version of pending records: 2 added `witnesses`. Version 1 records (no witnesses) are read
/// and get their witnesses recorded by the next prune; rewind versions that knew only version 1
/// refuse version 2 records, so an old prune cannot sweep them by its unsafe rule.
pub const PENDING_VERSION: u32 = 2;

/// `REPO/pending/<name>`, JSON: packs a prune condemned, to be deleted once every writer that may
/// not have seen the record has ended (see FORMAT.md, "Prune").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    pub magic: String,
    pub version: u32,
    /// When the record was made (for people; no decision depends on it).
    pub time: jiff::Timestamp,
    pub packs: Vec<PackId>,
    /// The writer locks that existed just after the record became durable: the record may be
    /// swept once none of them is live. `None` until recorded.
    #[serde(default)]
    pub witnesses: Option<Vec<String>>,
    /// BLAKE3 of the record encoded with this field empty: a damaged record (a witness name
    /// changed by one bit would let it be swept too early) is refused, not misread.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sum: String,
}

impl Pending {
    pub fn decode(bytes: &[u8]) -> Result<Pending> {
        #[derive(Deserialize)]
        struct Head {
            magic: String,
            version: u32,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("pending record", e.to_string()))?;
        if head.magic != PENDING_MAGIC {
            return Err(Error::corrupt("pending record", "bad magic"));
        }
        if head.version == 0 || head.version > PENDING_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "pending record".into(),
                found: head.version,
                supported: PENDING_VERSION,
            });
        }
        let p: Pending = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("pending record", e.to_string()))?;
        if p.version >= 2 && p.sum != p.checksum() {
            return Err(Error::corrupt("pending record", "checksum mismatch"));
        }
        Ok(p)
    }

    fn checksum(&self) -> String {
        let plain = Pending { sum: String::new(), ..self.clone() };
        Hash::of(&serde_json::to_vec(&plain).expect("record serializes")).to_hex()
    }

    pub fn encode(&self) -> Vec<u8> {
        let sealed = Pending { sum: self.checksum(), ..self.clone() };
        let mut v = serde_json::to_vec_pretty(&sealed).expect("record serializes");
        v.push(b'\n');
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzzing

/// The decoders of bytes read from a repository, by name: the fuzz targets (`store/fuzz`) and
/// the test that replays their corpora run each through [`decode_for_fuzzing`].
pub const DECODERS: &[&str] = &[
    "pack",
    "index",
    "tree",
    "snapshot",
    "config",
    "pending",
    "lock",
    "key",
    "pack-v2",
    "index-v2",
    "snapshot-v2",
    "config-v2",
    "lock-v2",
    "dict-v2",
    "group",
];

/// The name the version 2 index and snapshot decoders are fuzzed under: a seed is sealed and
/// named for it (the decoders check the name, which the fuzzer's mutations then break too).
pub const FUZZ_NAME: &str = "0707070707070707070707070707070707070707070707070707070707070707";

/// The key the version 2 decoders are fuzzed under (the fuzzer cannot forge a tag, so what it
/// reaches past authentication comes from the seeds, which are sealed under this key).
pub fn fuzzing_codec() -> crate::codec::Codec {
    let key = crate::crypto::MasterKey::from_bytes(&[7u8; 96]).expect("96 bytes");
    crate::codec::Codec::encrypted(crate::crypto::Crypto::Encrypted(Box::new(key)))
}

/// The raw key the key-file decoder is fuzzed with, and the repository id it binds to.
pub fn fuzzing_raw_key() -> (crate::keys::Secret, Hash) {
    (crate::keys::Secret::parse_raw_key(&"07".repeat(32)).expect("64 hex digits"), Hash([9; 32]))
}

/// Run `bytes` through the decoder `name` of [`DECODERS`]; whether it accepted them. Never
/// panics, whatever the bytes (that is what the fuzzers check).
pub fn decode_for_fuzzing(name: &str, bytes: &[u8]) -> bool {
    match name {
        "pack" => decode_pack_records_of(bytes).is_ok(),
        "index" => decode_index(bytes).is_ok(),
        "tree" => Tree::decode(bytes).is_ok(),
        "snapshot" => Snapshot::decode(bytes).is_ok(),
        "config" => Config::decode(bytes).is_ok(),
        "pending" => Pending::decode(bytes).is_ok(),
        "lock" => LockInfo::decode(bytes).is_ok(),
        "key" => {
            let (secret, repo) = fuzzing_raw_key();
            crate::keys::KeyFile::decode(bytes).is_ok_and(|k| k.unwrap(&repo, &secret).is_ok_and(|m| m.is_some()))
        }
        "pack-v2" => fuzzing_codec().decode_pack(bytes).is_ok(),
        // Named as the seeds are: the id of the sealed plaintext under the fuzzing key.
        "index-v2" => fuzzing_codec().decode_index_named(FUZZ_NAME, bytes, false).is_ok(),
        "snapshot-v2" => fuzzing_codec()
            .decode_snapshot_named(&SnapshotId(Hash::from_hex(FUZZ_NAME).expect("hex")), bytes.to_vec(), false)
            .is_ok(),
        "config-v2" => Config::decode_sealed(bytes, fuzzing_codec().crypto()).is_ok(),
        "lock-v2" => fuzzing_codec().decode_lock("fuzz", bytes.to_vec()).is_ok(),
        // A dictionary file, then zstd's parsing of the dictionary and a decompression with it.
        "dict-v2" => fuzzing_codec()
            .decode_dict_named(FUZZ_NAME, bytes.to_vec(), false)
            .is_ok_and(|d| crate::dict::Dict::new(FUZZ_NAME.into(), d).is_ok_and(|d| crate::blob::fuzz_dict(&d))),
        // A group's frame (as opened from its seal), after the member's number (u16).
        "group" => crate::blob::fuzz_group(bytes),
        _ => panic!("no decoder {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_tree() -> Tree {
        let mut f = Node::new(b"a\nb\xff".to_vec(), NodeKind::File);
        f.mode = 0o644;
        f.size = 3;
        f.mtime = Time { sec: 1_767_225_600, nsec: 5 };
        f.content = vec![ChunkId(Hash::of(b"abc"))];
        f.xattrs = vec![Xattr { name: b"user.k".to_vec(), value: b"v".to_vec() }];
        let mut d = Node::new(b"dir".to_vec(), NodeKind::Dir);
        d.mode = 0o755;
        d.subtree = Some(TreeId(Hash::of(b"x")));
        Tree { nodes: vec![f, d] }
    }

    #[test]
    fn tree_round_trip() {
        let t = sample_tree();
        assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
    }

    /// A tree's id is part of the format: if this changes, old repositories stop deduplicating
    /// against new backups. Change it only with a format version bump.
    #[test]
    fn tree_id_is_stable() {
        let t = sample_tree();
        assert_eq!(
            Tree::id(&t.encode()).to_hex(),
            "a64a02760dbb917fa50c89f55893f6f1fabaa9106144c8a8aaece3c1171e89bc",
            "tree encoding changed: {}",
            Tree::id(&t.encode())
        );
    }

    #[test]
    fn record_round_trip() {
        let r = BlobRecord {
            id: BlobId { kind: BlobKind::Tree, hash: Hash::of(b"q") },
            compression: Compression::Zstd,
            offset: 12,
            stored_len: 7,
            raw_len: 9,
        };
        let t = encode_pack_trailer(&[r, r]);
        let (len, count, hash) = decode_pack_footer(&t[t.len() - PACK_FOOTER_LEN..]).unwrap();
        assert_eq!(count, 2);
        assert_eq!(decode_pack_records(&t[..len as usize], count, hash).unwrap(), vec![r, r]);
        let idx = vec![IndexPack { pack: PackId(Hash::of(b"p")), pack_len: 100, blobs: vec![r] }];
        assert_eq!(decode_index(&encode_index(&idx)).unwrap(), idx);
    }

    #[test]
    fn newer_versions_are_refused() {
        let mut c = Config::new(ChunkerParams::default(), CompressionParams::default(), Encryption::None);
        c.version = REPOSITORY_VERSION + 1;
        let err = Config::decode(&c.encode()).unwrap_err();
        assert!(err.to_string().contains("upgrade rewind"), "{err}");
        let mut tree = sample_tree().encode();
        tree[0] = TREE_VERSION + 1;
        assert!(matches!(Tree::decode(&tree), Err(Error::UnsupportedVersion { .. })));
    }

    proptest! {
        #[test]
        fn tree_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Tree::decode(&bytes);
        }

        #[test]
        fn index_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_index(&bytes);
            let mut with_magic = INDEX_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_index(&with_magic);
        }

        #[test]
        fn index_decode_of_valid_header_never_panics(count in 0u32..5, tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = INDEX_MAGIC.to_vec();
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
            b.extend_from_slice(&tail);
            let h = Hash::of(&b);
            b.extend_from_slice(&h.0);
            let _ = decode_index(&b);
        }

        #[test]
        fn pack_footer_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok((len, count, hash)) = decode_pack_footer(&bytes) {
                let _ = decode_pack_records(&vec![0; len as usize], count, hash);
            }
        }

        #[test]
        fn json_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Config::decode(&bytes);
            let _ = Snapshot::decode(&bytes);
        }
    }
}
