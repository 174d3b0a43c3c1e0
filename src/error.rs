//! The library's error type: one enum whose messages name the file and the fix.
//!
//! Stage binaries wrap these with `anyhow` context and print them on one line.

use std::path::PathBuf;

/// Every failure the core library reports. Messages are written for the person running
/// the pipeline: what went wrong, which file, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// pipeline.toml is malformed, has an unknown key, or holds inconsistent values.
    #[error("{0}")]
    Config(String),
    /// The sled manifest cannot be opened, is in use, or holds an unreadable record.
    #[error("{0}")]
    Manifest(String),
    /// A shard is missing, truncated, or has the wrong schema.
    #[error("{path}: {msg}")]
    Shard { path: PathBuf, msg: String },
    /// Input text or task data is unusable (empty, not UTF-8, binary, missing column...).
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },
    /// A checkpoint is missing, corrupt or does not match the configuration.
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// A model-level failure (shape mismatch, non-finite loss...).
    #[error("{0}")]
    Model(String),
    /// A stage cannot run because an upstream stage is missing or stale.
    #[error("{0}")]
    Stage(String),
}

/// Shorthand used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an `io::Error` with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A data error on `path`.
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// A shard error on `path`.
    pub fn shard(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Shard {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// A checkpoint error on `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// Adds the path to an `io::Result`.
pub trait IoContext<T> {
    /// Converts the error into [`Error::Io`] naming `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
