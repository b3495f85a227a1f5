//! The one error type of the data pipeline. Every message says what went wrong and where: the file, and
//! the line or byte offset when there is one, so that a bad input can be found and fixed by hand.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum DataError {
    /// An operating-system error while opening, reading or writing `path`.
    Io { path: String, source: io::Error },
    /// A C4 line that is not a JSON object with a string `text` field (or not UTF-8, or cut short).
    BadLine { path: String, line: u64, reason: String },
    /// A tokenizer file that does not follow the `peerlm-bpe v1` format (`line` 0: the file as a whole).
    BadTokenizer { path: String, line: usize, reason: String },
    /// A token shard whose header or contents fail validation.
    BadShard { path: String, reason: String },
    /// A request that cannot be met (vocabulary size out of range, no input files, windows too long...).
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    pub fn io(path: impl fmt::Display, source: io::Error) -> Self {
        DataError::Io { path: path.to_string(), source }
    }

    pub fn shard(path: impl fmt::Display, reason: impl Into<String>) -> Self {
        DataError::BadShard { path: path.to_string(), reason: reason.into() }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io { path, source } => write!(f, "{path}: {source}"),
            DataError::BadLine { path, line, reason } => write!(f, "{path}:{line}: {reason}"),
            DataError::BadTokenizer { path, line: 0, reason } => write!(f, "{path}: bad tokenizer file: {reason}"),
            DataError::BadTokenizer { path, line, reason } => {
                write!(f, "{path}:{line}: bad tokenizer file: {reason}")
            }
            DataError::BadShard { path, reason } => write!(f, "{path}: bad token shard: {reason}"),
            DataError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
