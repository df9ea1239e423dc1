//! The crate's error type.

/// Why governance could not start, reload or store something.
#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    /// The configuration has problems, each naming its field.
    #[error("invalid governance configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The SQLite database failed.
    #[error("governance database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The data directory could not be created.
    #[error("governance data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Redis store failed.
    #[error("governance redis store: {0}")]
    Redis(#[from] redis::RedisError),
    /// The store refused or could not be reached.
    #[error("governance store: {0}")]
    Store(String),
    /// The background writer has stopped.
    #[error("governance storage thread has stopped")]
    WriterGone,
    /// Serialising a stored record failed.
    #[error("governance record encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    /// No randomness for a new secret.
    #[error("no randomness for a new secret: {0}")]
    Random(String),
}
