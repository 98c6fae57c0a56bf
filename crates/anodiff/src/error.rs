//! The library's error type. Every error that comes from a file names the file; every error about a
//! tensor names the tensor, so a user with a broken checkpoint knows what to fix.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype} (float F32/F16/BF16/F64 or integer I64/U32/U8 expected)")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("missing tensor `{name}` (looked in {looked_in})")]
    MissingTensor { name: String, looked_in: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Image { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn config(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
    pub fn invalid(msg: impl std::fmt::Display) -> Self {
        Error::Invalid(msg.to_string())
    }
}
