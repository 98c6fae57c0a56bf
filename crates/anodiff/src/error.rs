//! The library's error type. Every error that comes from a file names the file; every error about a
//! tensor names the tensor, so a user with a broken checkpoint knows what to fix.

use std::path::PathBuf;

/// `Result` with the library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Every failure the library reports; the message names the file or tensor concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File or folder being accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A weights file could not be parsed as safetensors.
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// Parser message.
        msg: String,
    },
    /// A tensor is stored in a dtype the loader does not convert.
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype} (float F32/F16/BF16/F64 or integer I64/U32/U8 expected)")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// The dtype found, as spelled in the file.
        dtype: String,
    },
    /// A model expected a tensor that none of its files holds.
    #[error("missing tensor `{name}` (looked in {looked_in})")]
    MissingTensor {
        /// Tensor name.
        name: String,
        /// The files (or checkpoint) searched.
        looked_in: String,
    },
    /// A tensor exists but has the wrong shape for the model's config.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file holding it.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A file's content is wrong (bad JSON, unsupported option, inconsistent values).
    #[error("{path}: {msg}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// An image could not be decoded or encoded.
    #[error("{path}: {msg}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// Decoder or encoder message.
        msg: String,
    },
    /// Invalid arguments or state not tied to one file.
    #[error("{0}")]
    Invalid(String),
    /// An error from a candle tensor op.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// [`Error::Config`] for `path`.
    pub fn config(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
    /// [`Error::Invalid`] with `msg`.
    pub fn invalid(msg: impl std::fmt::Display) -> Self {
        Error::Invalid(msg.to_string())
    }
}
