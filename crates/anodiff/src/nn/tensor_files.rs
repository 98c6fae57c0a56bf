//! A named set of tensors read from one or more safetensors files, kept in their on-disk dtype
//! (f32, f16 or bf16) until a model asks for them; every tensor remembers the file it came from so
//! errors can name it.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Tensors by name, each remembering its source file.
pub struct TensorFiles {
    tensors: HashMap<String, (Tensor, usize)>,
    files: Vec<PathBuf>,
}

impl TensorFiles {
    /// Reads every tensor of every file. Duplicate names across files are an error.
    pub fn load(paths: &[PathBuf], device: &Device) -> Result<Self> {
        let mut tensors = HashMap::new();
        for (idx, path) in paths.iter().enumerate() {
            for (name, t) in read_safetensors(path, device)? {
                if tensors.insert(name.clone(), (t, idx)).is_some() {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        msg: format!("tensor `{name}` also appears in an earlier file"),
                    });
                }
            }
        }
        Ok(Self {
            tensors,
            files: paths.to_vec(),
        })
    }

    /// Wraps tensors that are already in memory; `label` stands in for the file name in errors.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, label: impl Into<PathBuf>) -> Self {
        Self {
            tensors: tensors.into_iter().map(|(k, v)| (k, (v, 0))).collect(),
            files: vec![label.into()],
        }
    }

    /// The tensor called `name` with the file it came from.
    pub fn get(&self, name: &str) -> Option<(&Tensor, &Path)> {
        self.tensors
            .get(name)
            .map(|(t, i)| (t, self.files[*i].as_path()))
    }

    /// Whether a tensor called `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every tensor name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Human-readable list of the files, for "looked in …" messages.
    pub fn describe(&self) -> String {
        self.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Parses one safetensors file with errors that name the file and the tensor.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            // Integer tensors (e.g. CLIP's `position_ids` in transformers-4 checkpoints) load as-is.
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::U32 => DType::U32,
            safetensors::Dtype::U8 => DType::U8,
            other => {
                return Err(Error::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device).map_err(|e| {
            Error::Safetensors {
                path: path.to_path_buf(),
                msg: format!("tensor `{name}`: {e}"),
            }
        })?;
        out.push((name, t));
    }
    Ok(out)
}

/// Writes tensors (converted to contiguous f32 unless already f16/bf16) to a safetensors file atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.contiguous()?;
        let (dtype, bytes): (safetensors::Dtype, Vec<u8>) = match t.dtype() {
            DType::F16 => (
                safetensors::Dtype::F16,
                t.flatten_all()?
                    .to_vec1::<half::f16>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            DType::BF16 => (
                safetensors::Dtype::BF16,
                t.flatten_all()?
                    .to_vec1::<half::bf16>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            _ => (
                safetensors::Dtype::F32,
                t.to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
        };
        views.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let data: Vec<(String, safetensors::tensor::TensorView)> = views
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::invalid(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(data, None).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    crate::io::atomic::write_atomic(path, &bytes)
}
