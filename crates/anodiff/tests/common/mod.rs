//! Helpers shared by the library's integration tests; each test file includes them with
//! `mod common;`.
#![allow(dead_code)] // every test binary uses only some of them

use anodiff::eval::lpips::LpipsNet;
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

/// The backbone convolutions as (features index, slice, in, out, kernel).
fn lpips_convs(net: LpipsNet) -> Vec<(usize, usize, usize, usize, usize)> {
    match net {
        LpipsNet::Alex => vec![
            (0, 1, 3, 64, 11),
            (3, 2, 64, 192, 5),
            (6, 3, 192, 384, 3),
            (8, 4, 384, 256, 3),
            (10, 5, 256, 256, 3),
        ],
        LpipsNet::Vgg => {
            let spec = [
                (0, 1, 3, 64),
                (2, 1, 64, 64),
                (5, 2, 64, 128),
                (7, 2, 128, 128),
                (10, 3, 128, 256),
                (12, 3, 256, 256),
                (14, 3, 256, 256),
                (17, 4, 256, 512),
                (19, 4, 512, 512),
                (21, 4, 512, 512),
                (24, 5, 512, 512),
                (26, 5, 512, 512),
                (28, 5, 512, 512),
            ];
            spec.iter().map(|&(j, s, i, o)| (j, s, i, o, 3)).collect()
        }
    }
}

/// The fixture script's formula, in f64 rounded to f32.
fn lpips_formula(shape: &[usize], j: usize, bias: bool) -> Tensor {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape[1..].iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| {
            let i = i as f64;
            let j = j as f64;
            if bias {
                (0.05 * (0.11 * i + j + 1.0).sin() + 0.02) as f32
            } else {
                ((0.37 * i + j).sin() * 2.0 / (fan_in as f64).sqrt()) as f32
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// LPIPS weights of `net` under the `lpips` package's names: the backbone by the formula of
/// `tools/parity/make_lpips_fixtures.py`, the heads from its fixture (`refs`, the file's tensors).
pub fn lpips_formula_weights(
    net: LpipsNet,
    refs: &HashMap<String, Tensor>,
) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (j, s, i, o, k) in lpips_convs(net) {
        out.push((
            format!("net.slice{s}.{j}.weight"),
            lpips_formula(&[o, i, k, k], j, false),
        ));
        out.push((
            format!("net.slice{s}.{j}.bias"),
            lpips_formula(&[o], j, true),
        ));
    }
    for l in 0..5 {
        out.push((
            format!("lin{l}.model.1.weight"),
            refs[&format!("{net}.lin{l}")].clone(),
        ));
    }
    out
}
