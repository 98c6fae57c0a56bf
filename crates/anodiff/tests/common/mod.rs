//! Helpers shared by the library's integration tests; each test file includes them with
//! `mod common;`.
#![allow(dead_code)] // every test binary uses only some of them

use anodiff::nn::tensor_files::read_safetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository's committed fixtures: `tests/fixtures/<sub>`.
pub fn fixtures(sub: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(sub)
}

/// Data the library ships (embedded at build time): `crates/anodiff/assets/<sub>`.
pub fn assets(sub: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets")).join(sub)
}

/// A real dataset (e.g. `mtd`) from `$ANODIFF_SHARED_DATA` or a `shared/data` folder next to the
/// checkout (or next to the folder holding it, for worktrees); `None`, with a SKIPPED line, when
/// it is not there.
pub fn shared_dataset(name: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("ANODIFF_SHARED_DATA") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data"
    )));
    candidates.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../../shared/data"
    )));
    let found = candidates.iter().map(|c| c.join(name)).find(|p| p.is_dir());
    if found.is_none() {
        println!("SKIPPED: real dataset {name} not found (looked in {candidates:?})");
    }
    found
}

/// A fresh, empty scratch folder, unique to this test binary, `name` and process.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "anodiff-{}-{name}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every tensor of a safetensors file, by name, on the CPU.
pub fn tensors(path: &Path) -> HashMap<String, Tensor> {
    read_safetensors(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

/// max |t| over all elements (computed in f32 for any float dtype).
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| over all elements.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Relative error max|got − want| / max|want|. The divisor is floored at 1e-12 so an all-zero
/// `want` gives 0 for an exact match and a huge error otherwise, never NaN.
pub fn rel(got: &Tensor, want: &Tensor) -> f32 {
    max_abs(&(got - want).unwrap()) / max_abs(want).max(1e-12)
}
