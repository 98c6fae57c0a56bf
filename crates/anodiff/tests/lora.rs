//! LoRA: parity with diffusers 0.42.1 + peft 0.21.2 (fixtures from tools/parity/make_lora_fixtures.py,
//! reusing the base weights of the unet/sd1 and clip/sd1 fixtures), kohya import, file round trip,
//! per-row set routing, merging, gradients, and errors for bad files.

mod common;

use anodiff::nn::Params;
use anodiff::sd::attention::{Attention, AttnKind, AttnLayerInfo, ForwardCtx, HasAttention};
use anodiff::sd::clip::{ClipTextConfig, ClipTextModel};
use anodiff::sd::lora::{Lora, LoraConfig};
use anodiff::sd::unet::{UNet2DConditionModel, UNetConfig};
use anodiff::sd::weights::Component;
use candle_core::{DType, Device, Tensor};
use common::{fixtures, max_abs, rel, temp_dir, tensors};
use std::collections::HashMap;
use std::path::PathBuf;

/// Relative tolerance vs diffusers/peft: max|ours − ref| ≤ REL_TOL · max|ref|.
const REL_TOL: f32 = 1e-4;
/// Merged weights vs adapter.
const MERGE_TOL: f32 = 1e-5;

fn lora_file() -> PathBuf {
    fixtures("lora/pytorch_lora_weights.safetensors")
}

fn kohya_file() -> PathBuf {
    fixtures("lora/kohya.safetensors")
}

fn reference() -> HashMap<String, Tensor> {
    tensors(&fixtures("lora/reference.safetensors"))
}

fn unet() -> UNet2DConditionModel {
    UNet2DConditionModel::load(&Component::at(fixtures("unet/sd1/unet")), &Device::Cpu).unwrap()
}

fn clip() -> ClipTextModel {
    ClipTextModel::load(
        &Component::at(fixtures("clip/sd1/text_encoder")),
        &Device::Cpu,
    )
    .unwrap()
}

fn run_unet(u: &UNet2DConditionModel, r: &HashMap<String, Tensor>, ctx: &ForwardCtx) -> Tensor {
    u.forward(
        &r["sample"],
        &r["timesteps"],
        &r["encoder_hidden_states"],
        ctx,
    )
    .unwrap()
}

fn run_clip(c: &ClipTextModel, r: &HashMap<String, Tensor>) -> Tensor {
    let ids = r["ids"].to_dtype(DType::U32).unwrap();
    c.forward(&ids).unwrap().last_hidden_state
}

#[test]
fn unet_lora_matches_diffusers_peft() {
    let r = reference();
    let u = unet();
    let base = run_unet(&u, &r, &ForwardCtx::default());
    let e_base = rel(&base, &r["unet_base"]);
    let lora = Lora::load_unet(&u, &lora_file()).unwrap();
    assert_eq!(lora.layers().len(), 22 * 4);
    let got = run_unet(&u, &r, &ForwardCtx::default());
    let e = rel(&got, &r["unet_out"]);
    println!("unet: base rel err {e_base:.2e}, with LoRA rel err {e:.2e} (tol {REL_TOL:.0e})");
    assert!(e_base <= REL_TOL && e <= REL_TOL);
    // The LoRA must matter, or the comparison proves nothing.
    assert!(rel(&r["unet_base"], &r["unet_out"]) > 0.1);
    lora.remove_unet(&u);
    assert!(rel(&run_unet(&u, &r, &ForwardCtx::default()), &base) == 0.0);
}

#[test]
fn clip_lora_matches_diffusers_peft() {
    let r = reference();
    let c = clip();
    let e_base = rel(&run_clip(&c, &r), &r["clip_base"]);
    let lora = Lora::load_clip(&c, &lora_file()).unwrap();
    assert_eq!(lora.layers().len(), 4 * 4);
    let e = rel(&run_clip(&c, &r), &r["clip_out"]);
    println!("clip: base rel err {e_base:.2e}, with LoRA rel err {e:.2e} (tol {REL_TOL:.0e})");
    assert!(e_base <= REL_TOL && e <= REL_TOL);
    assert!(rel(&r["clip_base"], &r["clip_out"]) > 0.1);
}

#[test]
fn kohya_import_gives_identical_outputs() {
    let r = reference();
    let (u, c) = (unet(), clip());
    let a = Lora::load_unet(&u, &lora_file()).unwrap();
    let peft_out = run_unet(&u, &r, &ForwardCtx::default());
    let b = Lora::load_unet(&u, &kohya_file()).unwrap();
    let kohya_out = run_unet(&u, &r, &ForwardCtx::default());
    assert_eq!(a.layers().len(), b.layers().len());
    let du = max_abs(&(&peft_out - &kohya_out).unwrap());
    Lora::load_clip(&c, &lora_file()).unwrap();
    let peft_te = run_clip(&c, &r);
    Lora::load_clip(&c, &kohya_file()).unwrap();
    let dt = max_abs(&(&peft_te - &run_clip(&c, &r)).unwrap());
    println!("kohya vs diffusers names: unet max diff {du:e}, clip max diff {dt:e}");
    assert!(du == 0.0 && dt == 0.0);
}

fn entries_equal(a: &Lora, b: &Lora, set_a: usize, set_b: usize) {
    let (ea, eb) = (a.entries(set_a).unwrap(), b.entries(set_b).unwrap());
    assert_eq!(ea.len(), eb.len());
    for (x, y) in ea.iter().zip(&eb) {
        assert_eq!(x.module, y.module);
        assert_eq!(x.scale, y.scale, "{}", x.module);
        for (p, q) in [(&x.down, &y.down), (&x.up, &y.up)] {
            let (p, q) = (
                p.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                q.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(
                p.iter().zip(&q).all(|(s, t)| s.to_bits() == t.to_bits()),
                "{}",
                x.module
            );
        }
    }
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    let dir = temp_dir("round-trip");
    let (u, c) = (unet(), clip());
    let lu = Lora::read_unet(&u, &lora_file()).unwrap();
    let lc = Lora::read_clip(&c, &lora_file()).unwrap();
    let both = dir.join("both.safetensors");
    Lora::save_many(&both, &[(&lu, 0), (&lc, 0)]).unwrap();
    entries_equal(&lu, &Lora::read_unet(&u, &both).unwrap(), 0, 0);
    entries_equal(&lc, &Lora::read_clip(&c, &both).unwrap(), 0, 0);
    // Optional export for the diffusers-side check (make_lora_fixtures.py --check <file>).
    if let Some(p) = std::env::var_os("ANODIFF_LORA_EXPORT") {
        Lora::save_many(std::path::Path::new(&p), &[(&lu, 0), (&lc, 0)]).unwrap();
    }

    // Several sets: each set is its own file; set 1 saved, then loaded into set 0 of another.
    let cfg = LoraConfig {
        sets: 2,
        alpha: Some(3.0),
        seed: 5,
        ..LoraConfig::unet(2)
    };
    let a = Lora::new_unet(&u, &cfg).unwrap();
    randomise_up(&a, 1, 1);
    let f1 = dir.join("set1.safetensors");
    a.save(&f1, 1).unwrap();
    let b = Lora::new_unet(
        &u,
        &LoraConfig {
            seed: 9,
            ..cfg.clone()
        },
    )
    .unwrap();
    b.load_set(&f1, 0).unwrap();
    entries_equal(&a, &b, 1, 0);
    let names: Vec<String> = a.vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(
        &"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.set1.weight"
            .to_string()
    ));
    assert_eq!(names.len(), 22 * 4 * 2 * 2);
    std::fs::remove_dir_all(&dir).ok();
}

/// Deterministic pseudo-random normal-ish values (seeded; tests must not depend on a global RNG).
fn randn(seed: u64, std: f32, shape: &[usize]) -> Tensor {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            // Sum of 4 uniforms, centred and scaled to unit variance.
            let mut s = 0.0f32;
            for _ in 0..4 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s += (x >> 40) as f32 / (1u64 << 24) as f32;
            }
            (s - 2.0) * 3f32.sqrt() * std
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Gives every `up` of set `set` random values (fresh LoRAs start with up = 0); `draw` tells the
/// calls apart.
fn randomise_up(l: &Lora, set: usize, draw: u64) {
    // Seeds from the call's own arguments: a counter shared by the tests made the draws depend on
    // which tests ran first in parallel (and `sets_are_routed_per_row` flaky at its tolerance).
    for (i, layer) in l.layers().iter().enumerate() {
        let up = &layer.sets[set].up;
        let seed = 1 + draw * 1_000_003 + set as u64 * 10_007 + 100 * i as u64;
        up.set(&randn(seed, 0.3, up.dims())).unwrap();
    }
}

#[test]
fn fresh_lora_is_identity_and_init_is_seeded() {
    let r = reference();
    let u = unet();
    let base = run_unet(&u, &r, &ForwardCtx::default());
    let cfg = LoraConfig::unet(4);
    let a = Lora::attach_unet(&u, &cfg).unwrap();
    assert_eq!(rel(&run_unet(&u, &r, &ForwardCtx::default()), &base), 0.0);
    let b = Lora::new_unet(&u, &cfg).unwrap();
    entries_equal(&a, &b, 0, 0);
    // down ~ N(0, std 1/r)
    let all: Vec<f32> = a
        .layers()
        .iter()
        .flat_map(|l| {
            l.sets[0]
                .down
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    let n = all.len() as f32;
    let std = (all.iter().map(|x| x * x).sum::<f32>() / n).sqrt();
    println!("fresh down: {n} values, std {std:.4} (want 0.25)");
    assert!((std - 0.25).abs() < 0.02);
    // Targets: only attn2 to_k.
    let only = Lora::new_unet(
        &u,
        &LoraConfig {
            targets: r"attn2\.to_k".into(),
            ..cfg
        },
    )
    .unwrap();
    assert_eq!(only.layers().len(), 11);
    assert!(only
        .layers()
        .iter()
        .all(|l| l.module.ends_with("attn2.to_k")));
}

#[test]
fn sets_are_routed_per_row() {
    let r = reference();
    let u = unet();
    let cfg = LoraConfig {
        sets: 2,
        ..LoraConfig::unet(2)
    };
    let l = Lora::attach_unet(&u, &cfg).unwrap();
    randomise_up(&l, 0, 2);
    randomise_up(&l, 1, 3);
    let ctx = |b: Vec<usize>| ForwardCtx {
        branch: Some(b),
        ..Default::default()
    };
    let mixed = run_unet(&u, &r, &ctx(vec![0, 1]));
    let only0 = run_unet(&u, &r, &ctx(vec![0, 0]));
    let only1 = run_unet(&u, &r, &ctx(vec![1, 1]));
    let none = run_unet(&u, &r, &ForwardCtx::default());
    let row = |t: &Tensor, i: usize| t.get(i).unwrap();
    let e0 = rel(&row(&mixed, 0), &row(&only0, 0));
    let e1 = rel(&row(&mixed, 1), &row(&only1, 1));
    let en = rel(&none, &only0);
    let sep = rel(&row(&only0, 1), &row(&only1, 1));
    println!("routing: row0 vs set0 {e0:.1e}, row1 vs set1 {e1:.1e}, None vs set0 {en:.1e}, sets differ by {sep:.2}");
    // A single-set batch takes the fused LoRA op, a mixed one the masked composition: the two
    // round differently (f32, ~1e-6 through the whole UNet); misrouting would differ by `sep`.
    assert!(e0 <= 1e-5 && e1 <= 1e-5 && en == 0.0 && sep > 1e-2);

    // Changing set 1 leaves rows of set 0 unchanged.
    randomise_up(&l, 1, 4);
    let mixed2 = run_unet(&u, &r, &ctx(vec![0, 1]));
    assert_eq!(rel(&row(&mixed2, 0), &row(&mixed, 0)), 0.0);
    assert!(rel(&row(&mixed2, 1), &row(&mixed, 1)) > 1e-3);

    // Gradients: a loss on row 0 only reaches set 0.
    let loss = row(&mixed, 0).sqr().unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let layer = &l.layers()[0];
    let g0 = g
        .get(layer.sets[0].up.as_tensor())
        .map(max_abs)
        .unwrap_or(0.0);
    let g1 = g
        .get(layer.sets[1].up.as_tensor())
        .map(max_abs)
        .unwrap_or(0.0);
    println!("grad of row-0 loss: set0 up {g0:.2e}, set1 up {g1:e}");
    assert!(g0 > 0.0 && g1 == 0.0);

    let bad = u.forward(
        &r["sample"],
        &r["timesteps"],
        &r["encoder_hidden_states"],
        &ctx(vec![0, 2]),
    );
    assert!(bad.unwrap_err().to_string().contains("branch 2"));
}

#[test]
fn merged_weights_match_adapter() {
    let r = reference();
    let dev = Device::Cpu;
    // UNet: overlay merged weights on the base checkpoint and rebuild.
    let u = unet();
    let l = Lora::load_unet(&u, &lora_file()).unwrap();
    let want = run_unet(&u, &r, &ForwardCtx::default());
    let comp = Component::at(fixtures("unet/sd1/unet"));
    let mut t = tensors(&comp.dir.join("diffusion_pytorch_model.safetensors"));
    for (k, w) in l.merged_unet_weights(&u, 0).unwrap() {
        assert!(t.insert(k.clone(), w).is_some(), "{k}");
    }
    let cfg: UNetConfig = comp.config().unwrap();
    let merged = UNet2DConditionModel::new(&cfg, &Params::from_tensors(t, &dev)).unwrap();
    let eu = rel(&run_unet(&merged, &r, &ForwardCtx::default()), &want);

    // CLIP.
    let c = clip();
    let lc = Lora::load_clip(&c, &lora_file()).unwrap();
    let want = run_clip(&c, &r);
    let cc = Component::at(fixtures("clip/sd1/text_encoder"));
    let mut t = tensors(&cc.dir.join("model.safetensors"));
    for (k, w) in lc.merged_clip_weights(&c, 0).unwrap() {
        assert!(t.insert(k.clone(), w).is_some(), "{k}");
    }
    let ccfg: ClipTextConfig = cc.config().unwrap();
    let mc = ClipTextModel::new(&ccfg, &Params::from_tensors(t, &dev)).unwrap();
    let ec = rel(&run_clip(&mc, &r), &want);
    println!("merged vs adapter: unet rel {eu:.2e}, clip rel {ec:.2e} (tol {MERGE_TOL:.0e})");
    assert!(eu <= MERGE_TOL && ec <= MERGE_TOL);

    // merge_linear on one layer: merged Linear == base Linear + LoRA delta.
    use candle_core::Module;
    let m = attention(AttnKind::SelfAttn, 6, 6);
    let lm = Lora::attach_unet(&m, &LoraConfig::unet(3)).unwrap();
    randomise_up(&lm, 0, 5);
    let layer = &lm.layers()[0];
    assert!(layer.module.ends_with("to_q"));
    let x = randn(7, 1.0, &[2, 4, 6]);
    let want = (m.0.to_q.forward(&x).unwrap() + layer.delta(&x, None).unwrap()).unwrap();
    let merged = anodiff::sd::lora::merge::merge_linear(&m.0.to_q, layer, 0).unwrap();
    assert!(merged.adapter().is_none());
    let el = rel(&merged.forward(&x).unwrap(), &want);
    println!("merge_linear vs adapter: rel {el:.2e}");
    assert!(el <= MERGE_TOL);
    assert!(anodiff::sd::lora::merge::merge_weight(
        &Tensor::zeros((3, 3), DType::F32, &dev).unwrap(),
        layer,
        0
    )
    .is_err());
}

/// One attention layer as a model, so `Lora::attach_unet` can target it.
struct OneAttn(Attention);
impl HasAttention for OneAttn {
    fn visit_attention(&self, f: &mut dyn FnMut(&Attention)) {
        f(&self.0)
    }
}

fn attention(kind: AttnKind, query_dim: usize, context_dim: usize) -> OneAttn {
    let info = AttnLayerInfo {
        name: "blk.attn".into(),
        index: 0,
        kind,
        heads: 2,
        head_dim: 3,
        query_dim,
        context_dim,
    };
    OneAttn(Attention::new(&Params::fresh(3, &Device::Cpu), info).unwrap())
}

/// d loss / d lora_A, lora_B through a cross-attention layer: autograd vs central differences
/// (f32: the modules compute in f32; eps 1e-2, tolerance 2e-2 relative to the largest gradient).
#[test]
fn lora_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let m = attention(AttnKind::Cross, 6, 5);
    let l = Lora::attach_unet(
        &m,
        &LoraConfig {
            alpha: Some(4.0),
            ..LoraConfig::unet(2)
        },
    )
    .unwrap();
    randomise_up(&l, 0, 6);
    let h = randn(11, 1.0, &[2, 4, 6]);
    let c = randn(12, 1.0, &[2, 3, 5]);
    let w = randn(13, 1.0, &[2, 4, 6]);
    let loss = || -> Tensor {
        let o =
            m.0.forward(&h, Some(&c), &ForwardCtx::default(), None)
                .unwrap();
        (o * &w).unwrap().sum_all().unwrap()
    };
    let grads = loss().backward().unwrap();
    let eps = 1e-2f32;
    let mut worst = 0f32;
    let mut scale = 0f32;
    let mut checked = 0;
    for layer in l.layers() {
        for var in [&layer.sets[0].down, &layer.sets[0].up] {
            let g = grads
                .get(var.as_tensor())
                .expect("LoRA var has a gradient")
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let v0 = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for i in 0..v0.len() {
                let eval = |d: f32| {
                    let mut v = v0.clone();
                    v[i] += d;
                    var.set(&Tensor::from_vec(v, var.dims(), &dev).unwrap())
                        .unwrap();
                    loss().to_scalar::<f32>().unwrap()
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                worst = worst.max((fd - g[i]).abs());
                scale = scale.max(g[i].abs());
                checked += 1;
            }
            var.set(&Tensor::from_vec(v0, var.dims(), &dev).unwrap())
                .unwrap();
        }
    }
    println!("finite differences: {checked} entries, max |fd - autograd| {worst:.2e}, max |grad| {scale:.2e}");
    assert!(checked == 92 && worst <= 2e-2 * scale);
}

#[test]
fn dropout_only_in_training_and_seeded() {
    let m = attention(AttnKind::SelfAttn, 6, 6);
    let cfg = LoraConfig {
        dropout: 0.5,
        ..LoraConfig::unet(2)
    };
    let l = Lora::attach_unet(&m, &cfg).unwrap();
    randomise_up(&l, 0, 7);
    let h = randn(21, 1.0, &[2, 4, 6]);
    let run = || m.0.forward(&h, None, &ForwardCtx::default(), None).unwrap();
    let (e1, e2) = (run(), run());
    assert_eq!(max_abs(&(&e1 - &e2).unwrap()), 0.0);
    l.set_training(true);
    let t1 = run();
    assert!(max_abs(&(&t1 - &e1).unwrap()) > 1e-4);
    l.set_training(false);
    assert_eq!(max_abs(&(&run() - &e1).unwrap()), 0.0);
}

fn write(path: &std::path::Path, t: Vec<(&str, Tensor)>) {
    let t: Vec<(String, Tensor)> = t.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    anodiff::nn::tensor_files::write_safetensors(path, &t).unwrap();
}

#[test]
fn bad_files_give_errors_naming_file_and_key() {
    let dev = Device::Cpu;
    let dir = temp_dir("bad-files");
    let u = unet();
    let q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev).unwrap();
    let err = |name: &str, t: Vec<(&str, Tensor)>| {
        let p = dir.join(name);
        write(&p, t);
        let e = Lora::read_unet(&u, &p)
            .err()
            .expect("must fail")
            .to_string();
        assert!(e.contains(name), "{e}");
        println!("{e}");
        e
    };
    let a = format!("{q}.lora_A.weight");
    let b = format!("{q}.lora_B.weight");
    let e = err("no_up.safetensors", vec![(&a, z(&[4, 6]))]);
    assert!(e.contains("attn1.to_q") && e.contains("no up"));
    let e = err(
        "shape.safetensors",
        vec![(&a, z(&[4, 7])), (&b, z(&[6, 4]))],
    );
    assert!(e.contains(&a) && e.contains("[4, 7]"));
    let e = err(
        "unknown.safetensors",
        vec![(
            "unet.down_blocks.0.resnets.0.conv1.lora_A.weight",
            z(&[4, 6]),
        )],
    );
    assert!(e.contains("conv1"));
    let e = err(
        "kohya_unknown.safetensors",
        vec![(
            "lora_unet_down_blocks_0_nothing_here.lora_down.weight",
            z(&[4, 6]),
        )],
    );
    assert!(e.contains("lora_unet_down_blocks_0_nothing_here"));
    // Lenient reading skips (and reports) well-formed keys of non-target layers.
    let p = dir.join("mixed.safetensors");
    let ff = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.lora_down.weight";
    let kq = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    write(
        &p,
        vec![
            (ff, z(&[4, 6])),
            (&format!("{kq}.lora_down.weight"), z(&[4, 6])),
            (&format!("{kq}.lora_up.weight"), z(&[6, 4])),
            (&format!("{kq}.alpha"), Tensor::new(2f32, &dev).unwrap()),
        ],
    );
    assert!(Lora::read_unet(&u, &p).is_err());
    let (l, skipped) = Lora::read_unet_lenient(&u, &p).unwrap();
    assert_eq!(skipped, vec![ff.to_string()]);
    assert_eq!(l.layers().len(), 1);
    assert_eq!(l.layers()[0].sets[0].scale(), 0.5);
    let e = err("odd.safetensors", vec![("model.weight", z(&[2]))]);
    assert!(e.contains("model.weight"));
    let p = dir.join("garbage.safetensors");
    std::fs::write(&p, b"not a safetensors file").unwrap();
    let e = Lora::read_unet(&u, &p).err().unwrap().to_string();
    assert!(e.contains("garbage.safetensors"), "{e}");
    let e = Lora::read_unet(&u, &dir.join("missing.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
    // A text-encoder-only file has nothing for the UNet.
    let c = clip();
    let lc = Lora::read_clip(&c, &lora_file()).unwrap();
    let te = dir.join("te_only.safetensors");
    lc.save(&te, 0).unwrap();
    let e = Lora::read_unet(&u, &te).err().unwrap().to_string();
    assert!(
        e.contains("te_only") && e.contains("no LoRA weights"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The LoRA layer alone in f64 (its own math supports any float dtype): gradients of a loss over a
/// batch routed to two sets, autograd vs central differences, tight tolerance.
#[test]
fn lora_layer_gradients_f64_with_mixed_sets() {
    use anodiff::sd::lora::{LoraLayer, LoraSet};
    use candle_core::Var;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let f64t = |seed: u64, shape: &[usize]| randn(seed, 1.0, shape).to_dtype(DType::F64).unwrap();
    let sets = (0..2)
        .map(|s| {
            LoraSet::new(
                Var::from_tensor(&f64t(30 + s, &[3, 5])).unwrap(),
                Var::from_tensor(&f64t(40 + s, &[4, 3])).unwrap(),
                0.7 + s as f64,
            )
        })
        .collect();
    let l =
        LoraLayer::from_sets("m", 5, 4, sets, 0.0, 0, Arc::new(AtomicBool::new(false))).unwrap();
    let x = f64t(50, &[3, 2, 5]);
    let w = f64t(51, &[3, 2, 4]);
    let branch = [1usize, 0, 1];
    let loss = || {
        (l.delta(&x, Some(&branch)).unwrap() * &w)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss().backward().unwrap();
    let eps = 1e-5;
    let mut worst = 0f64;
    for s in &l.sets {
        for var in [&s.down, &s.up] {
            let g = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let v0 = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for i in 0..v0.len() {
                let eval = |d: f64| {
                    let mut v = v0.clone();
                    v[i] += d;
                    var.set(&Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss().to_scalar::<f64>().unwrap()
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                worst = worst.max((fd - g[i]).abs() / g[i].abs().max(1.0));
            }
            var.set(&Tensor::from_vec(v0, var.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    println!("f64 LoRA layer, mixed sets: max rel |fd - autograd| {worst:.2e} (tol 1e-6)");
    assert!(worst <= 1e-6);
}
