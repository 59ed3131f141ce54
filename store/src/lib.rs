//! rewind's repository: a content-defined-chunked, BLAKE3-addressed, zstd-compressed, packed and
//! self-describing store of snapshots, and the read API that the mount and the portal share.
//!
//! Data flows one way: [`backup`] walks a source tree and writes packs, index files and finally a
//! snapshot manifest; [`Repository`] / [`IndexedRepository`] read them back; [`View`] presents
//! every snapshot as one namespace (`snapshots/`, `hosts/`, `ids/`, `tags/`).
//!
//! Invariants:
//! - Packs, index files and snapshots are immutable once written; every write is temp file, fsync,
//!   rename, fsync of the directory. A snapshot is written only after everything it references.
//! - A blob's id is the BLAKE3 of its uncompressed bytes, and every read verifies it: damaged data
//!   is an error ([`Error::Corrupt`]), never wrong bytes.
//! - The index is a cache of the packs' trailers: [`maintenance::rebuild_index`] recreates it.
//! - Readers take no locks; writers take a lock file in `locks/`, create it before reading the
//!   pending records, and read those before loading the index (FORMAT.md, "Prune").
//! - Damage stays local: a damaged snapshot, index file or pack trailer is reported by name and
//!   skipped by every operation that does not need it.
//!
//! The on-disk format is described in `store/FORMAT.md`.

mod backend;
mod backup;
mod batch;
mod blob;
mod cache;
mod chunker;
pub mod codec;
pub mod copy;
pub mod crypto;
mod dict;
mod error;
mod failpoint;
mod flight;
pub mod format;
pub mod image;
mod index;
pub mod interrupt;
pub mod keys;
mod local_cache;
pub mod lock;
pub mod maintenance;
mod pack;
pub mod prune;
mod repo;
mod restore;
pub mod retention;
mod revocation;
mod source;
mod spill;
#[cfg(test)]
mod testing;
mod view;

pub use backend::{Backend, FileKind, LocalBackend, TmpFile};
pub use backup::{BackupOptions, BackupProgress, ErrorReport, backup};
pub use batch::{PackRun, plan_runs};
pub use chunker::Chunker;
pub use error::{Error, Result};
pub use flight::{Lead, SingleFlight};
pub use format::{
    BlobId, BlobKind, ChunkId, ChunkerParams, CompressionParams, Config, ConfigHead, ContentId, Encryption,
    FORMAT_VERSION, Hash, Node, NodeKind, PackId, Snapshot, SnapshotId, Summary, Time, Tree, TreeId, Xattr,
};
pub use index::Location;
pub use keys::{KdfParams, KeyFile, KeyKind, Secret, SecretSource};
pub use lock::{LockEntry, LockInfo, LockState, hostname, list_locks, unlock};
pub use repo::{
    CacheSizes, ChunkSpan, DamagedSnapshot, FileReader, GroupScope, IndexedRepository, NewKey, Piece, Repository,
    SnapshotEntry, private_folder,
};
pub use restore::{Overwrite, RestoreOptions, RestoreProgress, restore, restore_from_view};
pub use revocation::{Revocation, revocation_until};
pub use view::{Attr, Entry, IMAGE_FOLDER_SUFFIX, ImageEntry, Images, View};
