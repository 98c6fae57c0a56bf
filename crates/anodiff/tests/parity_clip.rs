//! Parity of `anodiff::sd::clip::ClipTextModel` with transformers 5.23 `CLIPTextModel` on two tiny
//! random-weight text encoders (fixtures from tools/parity/make_clip_fixtures.py):
//! `sd1` (quick_gelu, legacy eos id 2 → argmax pooling, f16 on disk, `text_model.` names) and
//! `sd2` (gelu, eos-id pooling, f32, transformers-5 names without the prefix).

mod common;

use anodiff::nn::tensor_files::read_safetensors;
use anodiff::sd::clip::{ClipActivation, ClipTextModel};
use anodiff::sd::weights::{Component, ModelDir};
use candle_core::{DType, Device, Tensor};
use common::{fixtures, max_abs, temp_dir, tensors};
use std::collections::HashMap;

/// Relative tolerance: max|ours − reference| ≤ TOL · max|reference|, per output.
const TOL: f32 = 1e-4;

fn reference() -> HashMap<String, Tensor> {
    tensors(&fixtures("clip/reference.safetensors"))
}

fn load(tag: &str) -> (ClipTextModel, Vec<String>) {
    let dev = Device::Cpu;
    let c = ModelDir::open(fixtures("clip").join(tag))
        .unwrap()
        .component("text_encoder")
        .unwrap();
    let cfg = c.config().unwrap();
    let p = c.params(&dev).unwrap();
    let m = ClipTextModel::new(&cfg, &p).unwrap();
    (m, p.unused())
}

fn check(tag: &str) {
    let refs = reference();
    let (model, unused) = load(tag);
    assert!(
        unused.is_empty(),
        "{tag}: unused checkpoint tensors {unused:?}"
    );
    let ids = refs[&format!("ids_{tag}")].to_dtype(DType::U32).unwrap();
    let out = model.forward(&ids).unwrap();
    for (name, ours) in [
        ("last_hidden_state", &out.last_hidden_state),
        ("penultimate", &out.penultimate),
        ("pooled", &out.pooled),
    ] {
        let want = &refs[&format!("{tag}.{name}")];
        assert_eq!(ours.dims(), want.dims(), "{tag}.{name} shape");
        let err = max_abs(&(ours - want).unwrap());
        let ratio = err / max_abs(want);
        println!(
            "{tag}.{name}: max|diff| = {err:.3e}, ratio to max|ref| = {ratio:.3e} (tol {TOL:.0e})"
        );
        assert!(ratio <= TOL, "{tag}.{name}: ratio {ratio:.3e} > {TOL:.0e}");
    }
}

#[test]
fn sd1_style_f16_checkpoint_matches_transformers() {
    let (model, _) = load("sd1");
    let cfg = model.config();
    assert_eq!(cfg.hidden_act, ClipActivation::QuickGelu);
    assert_eq!(cfg.eos_token_id, Some(2));
    // The checkpoint really is f16 on disk.
    let file = fixtures("clip/sd1/text_encoder/model.safetensors");
    let tensors = read_safetensors(&file, &Device::Cpu).unwrap();
    assert!(tensors.iter().all(|(_, t)| t.dtype() == DType::F16));
    assert!(tensors.iter().all(|(n, _)| n.starts_with("text_model.")));
    check("sd1");
}

#[test]
fn sd2_style_checkpoint_matches_transformers() {
    let (model, _) = load("sd2");
    assert_eq!(model.config().hidden_act, ClipActivation::Gelu);
    assert_eq!(model.config().eos_token_id, Some(500));
    check("sd2");
}

#[test]
fn load_from_component_and_linear_names() {
    let c = Component::at(fixtures("clip/sd1/text_encoder"));
    let m = ClipTextModel::load(&c, &Device::Cpu).unwrap();
    let mut names = Vec::new();
    m.visit_linears(&mut |l| names.push(l.name.clone()));
    assert_eq!(names.len(), 4 * 4);
    assert_eq!(names[0], "text_model.encoder.layers.0.self_attn.q_proj");
    assert_eq!(names[15], "text_model.encoder.layers.3.self_attn.out_proj");
    // transformers-5 layout: same names without the prefix.
    let c = Component::at(fixtures("clip/sd2/text_encoder"));
    let m = ClipTextModel::load(&c, &Device::Cpu).unwrap();
    let mut names = Vec::new();
    m.visit_linears(&mut |l| names.push(l.name.clone()));
    assert_eq!(names.len(), 3 * 4);
    assert_eq!(names[1], "encoder.layers.0.self_attn.k_proj");
}

#[test]
fn corrupt_or_truncated_weights_name_the_file() {
    let src = fixtures("clip/sd2/text_encoder");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    for (case, data) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("garbage", b"this is not a safetensors file".to_vec()),
    ] {
        let dir = temp_dir(case);
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        std::fs::write(dir.join("model.safetensors"), data).unwrap();
        let err = ClipTextModel::load(&Component::at(&dir), &Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{case} file loaded"))
            .to_string();
        println!("{case}: {err}");
        assert!(err.contains("model.safetensors"), "{case}: {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bad_config_names_the_file() {
    let src = fixtures("clip/sd2/text_encoder");
    let dir = temp_dir("cfg");
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let cfg = cfg.replace("\"num_attention_heads\": 3", "\"num_attention_heads\": 5");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let err = ClipTextModel::load(&Component::at(&dir), &Device::Cpu)
        .err()
        .expect("bad head count accepted")
        .to_string();
    println!("{err}");
    assert!(
        err.contains("config.json") && err.contains("num_attention_heads"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
