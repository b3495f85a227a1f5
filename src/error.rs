//! The crate's one error type, [`Error`]: what kind of failure, with a message that says what went wrong
//! and where (the file, and the line or byte offset when there is one), so that a bad input can be found
//! and fixed by hand. It sits on the bottom floor, beside the tensor, so that every part of the crate,
//! `data/` included, returns it.

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// An operating-system error while opening, reading, writing or locking `path`.
    Io { path: String, source: io::Error },
    /// A C4 line that is not a JSON object with a string `text` field (or not UTF-8, or cut short).
    BadLine { path: String, line: u64, reason: String },
    /// A tokenizer file that does not follow the `peerlm-bpe v1` format (`line` 0: the file as a whole).
    BadTokenizer { path: String, line: usize, reason: String },
    /// A token shard whose header or contents fail validation.
    BadShard { path: String, reason: String },
    /// A checkpoint file whose bytes, header, checksums or tensors cannot be read.
    BadCheckpoint(String),
    /// Optimizer state that does not fit the model it is loaded into.
    OptimizerState(String),
    /// Bytes that cannot be borrowed as a tensor's elements (misaligned, too short, a size that overflows).
    Mapping(String),
    /// A model file that cannot be opened, exported or run.
    Inference(String),
    /// A backward that disagrees with finite differences ([`crate::gradcheck`]).
    Gradcheck(String),
    /// A training run, sweep or study that cannot go on: a bad config or checkpoint for the run, a loss that
    /// is not finite, a run directory in use or holding another run.
    Train(String),
    /// A request that cannot be met (vocabulary size out of range, no input files, windows too long...).
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl fmt::Display, source: io::Error) -> Self {
        Error::Io { path: path.to_string(), source }
    }

    pub fn shard(path: impl fmt::Display, reason: impl Into<String>) -> Self {
        Error::BadShard { path: path.to_string(), reason: reason.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::BadLine { path, line, reason } => write!(f, "{path}:{line}: {reason}"),
            Error::BadTokenizer { path, line: 0, reason } => write!(f, "{path}: bad tokenizer file: {reason}"),
            Error::BadTokenizer { path, line, reason } => write!(f, "{path}:{line}: bad tokenizer file: {reason}"),
            Error::BadShard { path, reason } => write!(f, "{path}: bad token shard: {reason}"),
            Error::OptimizerState(message) => write!(f, "optimizer state: {message}"),
            Error::BadCheckpoint(message)
            | Error::Mapping(message)
            | Error::Inference(message)
            | Error::Gradcheck(message)
            | Error::Train(message)
            | Error::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
