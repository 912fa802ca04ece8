//! The engine's error type: one enum for the whole storage layer.

use std::fmt;
use std::io;

/// Everything the storage engine can report.
///
/// Corruption always names the file and the byte offset at which the damage was found, so an
/// operator can tell a torn disk from a bug.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system (or the simulated disk) refused an operation on `file`.
    #[error("I/O error on {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    /// Bytes on disk do not decode: a checksum mismatch, a bad magic number, a length that points
    /// outside the file, an unknown version.
    #[error("corruption in {file} at offset {offset}: {detail}")]
    Corruption {
        file: String,
        offset: u64,
        detail: String,
    },
    /// Writes are refused because background work (flush or compaction) is behind.
    #[error("write stalled: {0}")]
    WriteStall(String),
    /// A background flush or compaction failed; the engine keeps its last good state.
    #[error("background work failed: {0}")]
    Background(String),
    /// The caller passed something the engine cannot accept (a bad option, an oversized key).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The database was closed.
    #[error("database is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(file: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            file: file.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        file: impl Into<String>,
        offset: u64,
        detail: impl fmt::Display,
    ) -> Self {
        Error::Corruption {
            file: file.into(),
            offset,
            detail: detail.to_string(),
        }
    }

    /// True for errors that mean the bytes on disk are damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
