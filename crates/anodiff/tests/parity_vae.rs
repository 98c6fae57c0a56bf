//! Parity of `anodiff::sd::vae::AutoencoderKL` with diffusers `AutoencoderKL` on small
//! random-weight models, plus the loader's error messages for broken `vae/` folders.
//!
//! Fixtures: tests/fixtures/vae/<case>/{vae/, reference.safetensors}, written by
//! `python tools/parity/make_vae_fixtures.py` (see its header for versions).

mod common;

use anodiff::nn::tensor_files::{read_safetensors, write_safetensors};
use anodiff::sd::vae::{AutoencoderKL, VaeConfig};
use anodiff::sd::weights::{Component, ModelDir};
use candle_core::{Device, Tensor};
use common::{fixtures, max_abs, temp_dir, tensors};
use std::collections::HashMap;
use std::path::PathBuf;

/// Relative tolerance: max|ours - ref| ≤ TOL · max|ref|, for every compared tensor.
const TOL: f32 = 1e-4;

fn case_dir(case: &str) -> PathBuf {
    fixtures("vae").join(case)
}

fn references(case: &str) -> HashMap<String, Tensor> {
    tensors(&case_dir(case).join("reference.safetensors"))
}

/// Prints and asserts the relative error of `ours` against `reference`.
fn compare(case: &str, what: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.dims(), reference.dims(), "{case}/{what}: shape");
    let err = max_abs(&(ours - reference).unwrap());
    let scale = max_abs(reference);
    println!(
        "{case:13} {what:8} max|diff| = {err:.3e}  max|ref| = {scale:.3e}  rel = {:.3e}",
        err / scale
    );
    assert!(
        err <= TOL * scale,
        "{case}/{what}: max|diff| {err:e} > {TOL:e} · max|ref| {scale:e}"
    );
}

fn check_case(case: &str) {
    let dev = Device::Cpu;
    let comp = ModelDir::open(case_dir(case))
        .unwrap()
        .component("vae")
        .unwrap();

    // Every checkpoint tensor must be consumed: an unused one means a naming mismatch.
    let cfg: VaeConfig = comp.config().unwrap();
    let p = comp.params(&dev).unwrap();
    AutoencoderKL::new(&cfg, &p).unwrap();
    assert!(
        p.unused().is_empty(),
        "{case}: unused tensors {:?}",
        p.unused()
    );

    let vae = AutoencoderKL::load(&comp, &dev).unwrap();
    let r = references(case);
    let post = vae.encode(&r["image"]).unwrap();
    compare(case, "mean", &post.mean, &r["mean"]);
    compare(case, "logvar", &post.logvar, &r["logvar"]);
    let ref_std = (&r["logvar"] * 0.5).unwrap().exp().unwrap();
    compare(case, "std", &post.std().unwrap(), &ref_std);
    compare(
        case,
        "sample",
        &post.sample(&r["noise"]).unwrap(),
        &r["sample"],
    );
    compare(
        case,
        "decoded",
        &vae.decode(&r["latent"]).unwrap(),
        &r["decoded"],
    );
}

#[test]
fn parity_two_blocks() {
    // Also decodes a non-square 4×6 latent.
    check_case("two_blocks");
}

#[test]
fn parity_three_blocks() {
    // Non-square 24×32 image, three blocks (two down/upsamplings), two resnets per block.
    check_case("three_blocks");
}

/// A scratch copy of a fixture's `vae/` folder that removes itself.
struct TempVae(PathBuf);

impl TempVae {
    fn new(tag: &str) -> Self {
        let dir = temp_dir(tag);
        let src = case_dir("two_blocks").join("vae");
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        Self(dir)
    }

    fn weights(&self) -> PathBuf {
        self.0.join("diffusion_pytorch_model.safetensors")
    }

    /// Rewrites the weights with `edit` applied to the tensor list.
    fn edit_weights(&self, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
        let mut ts = read_safetensors(&self.weights(), &Device::Cpu).unwrap();
        edit(&mut ts);
        write_safetensors(&self.weights(), &ts).unwrap();
    }

    fn load_err(&self) -> String {
        match AutoencoderKL::load(&Component::at(&self.0), &Device::Cpu) {
            Ok(_) => panic!("loading {} should fail", self.0.display()),
            Err(e) => e.to_string(),
        }
    }
}

impl Drop for TempVae {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn scaling_factor_read_from_config() {
    let dev = Device::Cpu;
    let load = |case: &str| AutoencoderKL::load(&Component::at(case_dir(case).join("vae")), &dev);
    let three = load("three_blocks").unwrap();
    assert_eq!(three.scaling_factor(), 0.13025);
    assert_eq!(three.config().block_out_channels, vec![8, 16, 16]);
    assert_eq!(three.config().latent_channels, 4);
    assert_eq!(load("two_blocks").unwrap().scaling_factor(), 0.18215);
    // `shift_factor: null` in the fixtures means no shift.
    assert_eq!(three.shift_factor(), 0.0);

    // Absent scaling_factor takes diffusers' default; shift_factor / force_upcast are parsed and
    // unknown keys are ignored.
    let cfg: VaeConfig = serde_json::from_str(
        r#"{"block_out_channels": [8, 16], "shift_factor": 0.1159, "force_upcast": false,
            "latents_mean": null, "some_future_key": [1, 2]}"#,
    )
    .unwrap();
    assert_eq!(cfg.scaling_factor, 0.18215);
    assert_eq!(cfg.shift_factor, Some(0.1159));
    assert!(!cfg.force_upcast);
}

#[test]
fn error_wrong_shape_names_tensor_and_shapes() {
    let t = TempVae::new("shape");
    t.edit_weights(|ts| {
        let e = ts
            .iter_mut()
            .find(|(n, _)| n == "decoder.conv_in.weight")
            .unwrap();
        e.1 = Tensor::zeros((32, 4, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    });
    let e = t.load_err();
    println!("wrong shape: {e}");
    assert!(e.contains("decoder.conv_in.weight"), "{e}");
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
    assert!(
        e.contains("[32, 4, 3, 3]") && e.contains("[32, 4, 1, 1]"),
        "{e}"
    );
}

#[test]
fn error_missing_tensor_names_it() {
    let t = TempVae::new("missing");
    let name = "encoder.mid_block.attentions.0.to_q.bias";
    t.edit_weights(|ts| ts.retain(|(n, _)| n != name));
    let e = t.load_err();
    println!("missing tensor: {e}");
    assert!(
        e.contains(name) && e.contains("diffusion_pytorch_model.safetensors"),
        "{e}"
    );
}

#[test]
fn error_corrupt_safetensors_names_file() {
    let t = TempVae::new("corrupt");
    let bytes = std::fs::read(t.weights()).unwrap();
    std::fs::write(t.weights(), &bytes[..bytes.len() / 2]).unwrap();
    let e = t.load_err();
    println!("truncated: {e}");
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
    std::fs::write(t.weights(), b"\x08\0\0\0\0\0\0\0not json").unwrap();
    let e = t.load_err();
    println!("garbage: {e}");
    assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
}

#[test]
fn error_missing_config_names_file() {
    let t = TempVae::new("noconfig");
    std::fs::remove_file(t.0.join("config.json")).unwrap();
    let e = t.load_err();
    println!("missing config: {e}");
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn error_bad_config_names_file_and_field() {
    let t = TempVae::new("badconfig");
    let path = t.0.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"silu\"", "\"gelu\"")).unwrap();
    let e = t.load_err();
    println!("bad config: {e}");
    assert!(e.contains("config.json") && e.contains("gelu"), "{e}");
}
