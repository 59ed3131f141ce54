//! The one error type of the catalog.

/// Errors of the catalog. The catalog is a cache: most callers log these and carry on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the repository failed (a snapshot or tree is missing or damaged).
    #[error(transparent)]
    Store(#[from] rewind_store::Error),

    /// The database failed: locked for too long, full disk, damaged file.
    #[error("catalog database: {0}")]
    Db(#[from] rusqlite::Error),

    /// A query that makes no sense (an empty pattern, a bad glob, an unknown host).
    #[error("{0}")]
    InvalidInput(String),

    /// The named path or host is not in the catalog.
    #[error("{0} not found in the catalog")]
    NotFound(String),

    /// An operating-system error, with the path it concerned.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The catalog's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the database file is damaged (not a busy or full database): a cache in that state
    /// is deleted and rebuilt.
    pub fn is_corrupt(&self) -> bool {
        match self {
            Error::Db(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(e.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            }
            _ => false,
        }
    }
}
