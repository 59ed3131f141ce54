//! The errors of mounting. Errors of single filesystem calls are errno values, see `core`.

use std::path::PathBuf;

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("mountpoint {0} does not exist (create an empty directory first)")]
    MountpointMissing(PathBuf),

    #[error("mountpoint {0} is not a directory")]
    NotADirectory(PathBuf),

    #[error("{0} is already a mount point (unmount it first: fusermount3 -u {0})")]
    AlreadyMounted(PathBuf),

    #[error("mountpoint {0} is not empty: mounting would hide its files")]
    NotEmpty(PathBuf),

    #[error("mountpoint {0} is busy")]
    Busy(PathBuf),

    #[error("/dev/fuse is missing: load the fuse module and install fuse3")]
    NoFuse,

    #[error("--allow-other was refused ({0}): add `user_allow_other` to /etc/fuse.conf or mount as root")]
    AllowOtherDenied(#[source] std::io::Error),

    #[error("cannot mount at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Store(#[from] rewind_store::Error),
}
