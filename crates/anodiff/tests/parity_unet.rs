//! Parity of `UNet2DConditionModel` with diffusers 0.42.1 on small random-weight UNets
//! (fixtures from tools/parity/make_unet_fixtures.py), plus the attention-processor hook, shape
//! handling and error reporting of the UNet.

mod common;

use anodiff::nn::tensor_files::read_safetensors;
use anodiff::nn::{ops, Params};
use anodiff::sd::attention::{AttnCall, AttnKind, AttnProcessor, ForwardCtx, HasAttention};
use anodiff::sd::unet::{UNet2DConditionModel, UNetConfig};
use anodiff::sd::weights::Component;
use candle_core::{DType, Device, Tensor};
use common::{fixtures, max_abs, max_diff, temp_dir, tensors};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Relative tolerance: max|ours − diffusers| ≤ REL_TOL · max|diffusers|.
const REL_TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    fixtures("unet").join(name)
}

fn cases(name: &str) -> HashMap<String, Tensor> {
    tensors(&fixture(name).join("cases.safetensors"))
}

/// Builds the model from the fixture's `unet/` folder and checks every checkpoint tensor was used.
fn load_checked(name: &str) -> UNet2DConditionModel {
    let dev = Device::Cpu;
    let c = Component::at(fixture(name).join("unet"));
    let p = c.params(&dev).unwrap();
    let cfg: UNetConfig = c.config().unwrap();
    let model = UNet2DConditionModel::new(&cfg, &p).unwrap();
    assert!(
        p.unused().is_empty(),
        "{name}: unused checkpoint tensors {:?}",
        p.unused()
    );
    model
}

/// Runs every `sample_k` case of a fixture and compares with `out_k`.
fn check_fixture(name: &str) {
    let dev = Device::Cpu;
    let _ = load_checked(name);
    // The public entry point the pipeline uses.
    let model =
        UNet2DConditionModel::load(&Component::at(fixture(name).join("unet")), &dev).unwrap();
    let cs = cases(name);
    let ehs = &cs["encoder_hidden_states"];
    assert_eq!(
        model.config().cross_attention_dim.get(0),
        ehs.dim(2).unwrap()
    );

    // Attention layers: same count, names and order as diffusers' `attn_processors`.
    let want: Vec<String> = std::fs::read_to_string(fixture(name).join("attn_processors.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let infos = model.attention_infos();
    let mut got: Vec<String> = infos.iter().map(|i| i.name.clone()).collect();
    println!(
        "{name}: {} attention layers (diffusers: {})",
        got.len(),
        want.len()
    );
    // diffusers lists them in module-registration order (down, up, mid); ours are in forward
    // order (down, mid, up), so compare as sets.
    let mut want = want;
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "{name}: attention layer names differ from diffusers"
    );
    assert_eq!(model.num_attention_layers(), want.len());
    assert!(infos.iter().enumerate().all(|(k, i)| i.index == k));

    let mut k = 0;
    let ctx = ForwardCtx::default();
    while let Some(sample) = cs.get(&format!("sample_{k}")) {
        let ts = &cs[&format!("timesteps_{k}")];
        let want = &cs[&format!("out_{k}")];
        let out = model.forward(sample, ts, ehs, &ctx).unwrap();
        assert_eq!(out.dims(), want.dims());
        let (err, scale) = (max_diff(&out, want), max_abs(want));
        println!(
            "{name} case {k}: t={:?} sample {:?}: max|diff| = {err:.3e}, max|ref| = {scale:.3}, rel = {:.3e}",
            ts.to_vec1::<f32>().unwrap(),
            sample.dims(),
            err / scale
        );
        assert!(
            err <= REL_TOL * scale,
            "{name} case {k}: max|diff| {err} > {REL_TOL} × {scale}"
        );
        k += 1;
    }
    assert!(k >= 3, "{name}: expected at least 3 cases, found {k}");
}

#[test]
fn unet_sd1_matches_diffusers() {
    check_fixture("sd1");
}

#[test]
fn unet_sd2_linear_proj_head_list_matches_diffusers() {
    check_fixture("sd2");
}

#[test]
fn unet_inpaint_9ch_matches_diffusers() {
    check_fixture("inpaint");
}

#[test]
fn unet_bf16_weights_match_diffusers() {
    check_fixture("sd1_bf16");
}

/// A single timestep (scalar or `[1]`, any numeric dtype) applies to the whole batch.
#[test]
fn unet_scalar_timestep_broadcasts() {
    let model = load_checked("sd1");
    let cs = cases("sd1");
    let (sample, ehs, want) = (&cs["sample_1"], &cs["encoder_hidden_states"], &cs["out_1"]);
    let ctx = ForwardCtx::default();
    for t in [
        Tensor::new(500f32, &Device::Cpu).unwrap(),
        Tensor::new(&[500f32], &Device::Cpu).unwrap(),
        Tensor::new(&[500i64, 500], &Device::Cpu).unwrap(),
    ] {
        let out = model.forward(sample, &t, ehs, &ctx).unwrap();
        let err = max_diff(&out, want);
        println!(
            "timestep {:?} {:?}: max|diff| = {err:.3e}",
            t.dtype(),
            t.dims()
        );
        assert!(err <= REL_TOL * max_abs(want));
    }
    let bad = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
    let e = model
        .forward(sample, &bad, ehs, &ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("timesteps"), "{e}");
}

/// Non-square and odd latent sizes keep their shape (the upsamplers follow the skip sizes).
#[test]
fn unet_non_square_and_odd_sizes() {
    let model = load_checked("sd1");
    let ehs = cases("sd1")["encoder_hidden_states"].clone();
    let t = Tensor::new(&[10f32, 900.0], &Device::Cpu).unwrap();
    for (h, w) in [(4, 6), (6, 4), (5, 7), (1, 3), (9, 16)] {
        let x = Tensor::randn(0f32, 1.0, (2, 4, h, w), &Device::Cpu).unwrap();
        let out = model.forward(&x, &t, &ehs, &ForwardCtx::default()).unwrap();
        assert_eq!(out.dims(), &[2, 4, h, w]);
        assert!(out
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite()));
    }
}

/// What the recording processor saw in one call.
struct Seen {
    name: String,
    kind: AttnKind,
    hw: Option<(usize, usize)>,
    probs_dims: Vec<usize>,
    row_sum_err: f32,
    timestep: Option<f64>,
}

/// Computes attention itself (so it sees the maps) and records every call.
struct Recorder(Mutex<Vec<Seen>>);

impl AttnProcessor for Recorder {
    fn attend(
        &self,
        call: &AttnCall,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
    ) -> anodiff::Result<Option<Tensor>> {
        let probs = ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
        let row_sum_err = max_abs(&(probs.sum_keepdim(3)? - 1.0)?);
        self.0.lock().unwrap().push(Seen {
            name: call.layer.name.clone(),
            kind: call.layer.kind,
            hw: call.hw,
            probs_dims: probs.dims().to_vec(),
            row_sum_err,
            timestep: call.ctx.timestep,
        });
        Ok(Some(probs.matmul(v)?))
    }
}

/// Token-grid size at UNet level `level` for an `h × w` latent (each downsample is ⌈x/2⌉).
fn level_hw(h: usize, w: usize, level: usize) -> (usize, usize) {
    (0..level).fold((h, w), |(h, w), _| (h.div_ceil(2), w.div_ceil(2)))
}

fn expected_level(name: &str, n_blocks: usize) -> usize {
    let idx = |prefix: &str| {
        name[prefix.len()..]
            .split('.')
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    if name.starts_with("down_blocks.") {
        idx("down_blocks.")
    } else if name.starts_with("up_blocks.") {
        n_blocks - 1 - idx("up_blocks.")
    } else {
        assert!(name.starts_with("mid_block."), "{name}");
        n_blocks - 1
    }
}

#[test]
fn unet_custom_processor_sees_every_layer_once() {
    let model = load_checked("sd2");
    let cs = cases("sd2");
    let ehs = &cs["encoder_hidden_states"];
    let n_blocks = model.config().block_out_channels.len();
    // Case 4 is 10 × 14: non-square with odd sizes at lower levels.
    let (sample, ts, want) = (&cs["sample_4"], &cs["timesteps_4"], &cs["out_4"]);
    let (b, _, h, w) = sample.dims4().unwrap();
    let ctx = ForwardCtx {
        timestep: Some(250.0),
        ..Default::default()
    };
    let plain = model.forward(sample, ts, ehs, &ctx).unwrap();

    let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
    let r = rec.clone();
    model.set_attn_processors(&mut |_| r.clone());
    let out = model.forward(sample, ts, ehs, &ctx).unwrap();

    let infos = model.attention_infos();
    let seen = rec.0.lock().unwrap();
    println!("recorder: {} calls for {} layers", seen.len(), infos.len());
    assert_eq!(seen.len(), infos.len(), "one call per layer per forward");
    for (info, s) in infos.iter().zip(seen.iter()) {
        assert_eq!(
            s.name, info.name,
            "calls happen in the layers' forward order"
        );
        let want_kind = if s.name.ends_with("attn1") {
            AttnKind::SelfAttn
        } else {
            AttnKind::Cross
        };
        assert_eq!(s.kind, want_kind, "{}", s.name);
        let (lh, lw) = level_hw(h, w, expected_level(&s.name, n_blocks));
        assert_eq!(s.hw, Some((lh, lw)), "{}", s.name);
        let keys = if s.kind == AttnKind::SelfAttn {
            lh * lw
        } else {
            ehs.dim(1).unwrap()
        };
        assert_eq!(
            s.probs_dims,
            vec![b, info.heads, lh * lw, keys],
            "{}",
            s.name
        );
        assert!(
            s.row_sum_err < 1e-5,
            "{}: rows of the map sum to 1 ± {}",
            s.name,
            s.row_sum_err
        );
        assert_eq!(s.timestep, Some(250.0));
    }
    let heads: Vec<usize> = infos.iter().map(|i| i.heads).collect();
    assert!(
        heads.contains(&1) && heads.contains(&4),
        "per-block head counts {heads:?}"
    );

    // The recorder computes plain attention, so the output is unchanged.
    let (d_plain, d_ref) = (max_diff(&out, &plain), max_diff(&out, want));
    println!("recorder vs default: {d_plain:.3e}; vs diffusers: {d_ref:.3e}");
    assert!(d_plain <= 1e-5 * max_abs(&plain));
    assert!(d_ref <= REL_TOL * max_abs(want));
}

#[test]
fn unet_wrong_input_channels_is_an_error() {
    let model = load_checked("sd1");
    let ehs = cases("sd1")["encoder_hidden_states"].clone();
    let t = Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 9, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let e = model
        .forward(&x, &t, &ehs, &ForwardCtx::default())
        .unwrap_err()
        .to_string();
    println!("{e}");
    assert!(e.contains("4 input channels") && e.contains('9'), "{e}");
    let x3 = Tensor::zeros((4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(model
        .forward(&x3, &t, &ehs, &ForwardCtx::default())
        .is_err());
    let x = Tensor::zeros((2, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let narrow = ehs.narrow(2, 0, 8).unwrap();
    let e = model
        .forward(&x, &t, &narrow, &ForwardCtx::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder_hidden_states"), "{e}");
}

#[test]
fn unet_unsupported_block_type_is_named() {
    let src = fixture("sd1").join("unet");
    let dir = temp_dir("cfg");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["down_block_types"][0] = "SimpleCrossAttnDownBlock2D".into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        src.join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let r = UNet2DConditionModel::load(&Component::at(&dir), &Device::Cpu);
    std::fs::remove_dir_all(&dir).unwrap();
    let e = r
        .err()
        .expect("unsupported block type must be refused")
        .to_string();
    println!("{e}");
    assert!(
        e.contains("SimpleCrossAttnDownBlock2D") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn unet_wrong_weight_shape_is_named() {
    let dev = Device::Cpu;
    let c = Component::at(fixture("sd1").join("unet"));
    let cfg: UNetConfig = c.config().unwrap();
    let mut tensors: HashMap<String, Tensor> = c
        .weight_files()
        .unwrap()
        .iter()
        .flat_map(|f| read_safetensors(f, &dev).unwrap())
        .collect();
    let name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    let good = tensors[name].dims().to_vec();
    tensors.insert(
        name.into(),
        Tensor::zeros((good[0], good[1] + 1), DType::F32, &dev).unwrap(),
    );
    let r = UNet2DConditionModel::new(&cfg, &Params::from_tensors(tensors, &dev));
    let e = r.err().expect("wrong shape must be refused").to_string();
    println!("{e}");
    assert!(e.contains(name), "{e}");
    assert!(e.contains(&format!("{good:?}")), "{e}");
    assert!(e.contains(&format!("{:?}", [good[0], good[1] + 1])), "{e}");
}
