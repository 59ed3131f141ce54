//! rewind-fs: every snapshot of a repository as a read-only FUSE filesystem.
//!
//! The namespace (`snapshots/`, `hosts/<h>/<time>` and `latest`, `ids/`, `tags/`) is
//! [`rewind_store::View`]'s; this crate only translates it to FUSE:
//! - `inode`: inode numbers derived from stable keys (path in the mount; `(dev, inode)` for hard
//!   links within a snapshot), unique for the life of the mount, entries kept while the kernel
//!   holds a lookup count and dropped on `forget`;
//! - `core`: every operation as a function returning `Result<_, Errno>`, tested without a mount
//!   (`attr`, `dir`, `read`, `prefetch`);
//! - `fuse`: the `fuser::Filesystem` glue, the only code that touches replies. Reads whose chunks
//!   are cached are answered at once; other reads and tree loads run on worker threads (`pool`),
//!   so the FUSE loop never waits on decompression. Opens and opendirs answer ENOSYS, so the
//!   kernel sends neither them nor their releases and keeps file data and listings cached
//!   (listings checked against the directory's mtime, which moves when the snapshot list
//!   changes). Walks are helped by prefetch: trees two levels below a listed directory, and, in
//!   the order a `tar` reads them after the file it opened (its folder, then the folders that
//!   follow, depth first), the small files the kernel knows stored straight into its page cache
//!   (FUSE_NOTIFY_STORE, from a thread of their own), so reading them costs no round trip, and
//!   the first chunks of the other files loaded;
//! - `mount`: mountpoint checks, the foreground session, unmount on signals.
//!
//! Invariants: nothing is read at mount time but the index and snapshot manifests; memory is
//! bounded by the store's caches plus what the kernel holds inodes for; a damaged chunk is EIO
//! for the reads that need it (logged once per file), never wrong bytes; every write is EROFS.

mod core;
mod error;
mod fuse;
mod inode;
mod latency;
mod mount;
mod pool;

pub use error::Error;
pub use mount::{MountEntry, MountOptions, check_mountpoint, is_mount_point, mount, mounts};
