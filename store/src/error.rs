//! The one error type of the store. Its kinds are the ones a caller acts on: the FUSE driver maps
//! them to errno, the portal to HTTP status codes, the CLI to a one-line message.

use std::path::PathBuf;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named object (snapshot, path, blob, pack) does not exist.
    #[error("{0} not found")]
    NotFound(String),

    /// Stored bytes are damaged: a hash does not match, a file does not decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },

    /// The repository was written by a format this build does not know.
    #[error("{what} has format version {found}, this rewind reads versions up to {supported}; upgrade rewind")]
    UnsupportedVersion { what: String, found: u32, supported: u32 },

    /// There is no repository at the path.
    #[error("no rewind repository at {0} (run `rewind init` first)")]
    NoRepository(PathBuf),

    /// A repository exists where a new one was to be created.
    #[error("{0} already exists and is not empty")]
    AlreadyExists(PathBuf),

    /// The caller asked for something that makes no sense (a bad snapshot name, path or option).
    #[error("{0}")]
    InvalidInput(String),

    /// An operating-system error, with the path it concerned.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The repository is locked in a way that forbids the operation.
    #[error("repository is locked: {0}")]
    Locked(String),

    /// The repository's key could not be had: no secret given, a wrong password, no key file.
    #[error("{0}")]
    Key(String),

    /// The operation was asked to stop (SIGINT, SIGTERM) and did, leaving the repository as it
    /// was.
    #[error("interrupted")]
    Interrupted,
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into(), detail: detail.into() }
    }

    /// The errno this error should be reported as by a filesystem.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound(_) => libc::ENOENT,
            Error::InvalidInput(_) => libc::EINVAL,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EIO,
        }
    }

    /// Whether the error means stored data is damaged (as opposed to missing or misused).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

/// Attach a path to an I/O result.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
