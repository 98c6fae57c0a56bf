//! Finite-difference gradient checks of every trainable block, in f64, through the real model code.
//!
//! candle silently returns no gradient through some of its fast paths (`softmax_last_dim`, the
//! contiguous `LayerNorm`), so each check also asserts that *every* parameter and input receives
//! a gradient. Loss = Σ output · R with a fixed random R; central differences with ε = 1e-6 at a
//! few coordinates per tensor. Tolerance: |autograd − numeric| ≤ 1e-7 + 1e-5 · max(|numeric|,
//! 0.01 · max|gradient of that tensor|); the printed relative error uses the same denominator.

use anodiff::nn::{GroupNorm, LayerNorm, Params};
use anodiff::sd::attention::{Attention, AttnKind, AttnLayerInfo, ForwardCtx};
use anodiff::sd::clip::{ClipTextConfig, ClipTextModel};
use anodiff::sd::presets::Preset;
use anodiff::sd::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use anodiff::sd::unet::transformer::AttnSpec;
use anodiff::sd::unet::{BasicTransformerBlock, TimestepEmbedding, UNet2DConditionModel};
use anodiff::sd::vae::AutoencoderKL;
use candle_core::{DType, Device, Module, Tensor, Var};

fn dev() -> Device {
    Device::Cpu
}

fn params(seed: u64) -> Params {
    Params::fresh(seed, &dev()).with_dtype(DType::F64)
}

/// A trainable input of the given shape with N(0, 1) values.
fn input(shape: &[usize], seed: u64) -> Var {
    let t = Tensor::randn(0f64, 1.0, shape, &dev()).unwrap();
    // candle's CPU randn is seeded globally; mix in `seed` so inputs of one test differ.
    let t = (t + (seed as f64 * 0.01)).unwrap();
    Var::from_tensor(&t).unwrap()
}

fn set_elem(v: &Var, i: usize, val: f64) {
    let shape = v.as_tensor().dims().to_vec();
    let mut data = v
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    data[i] = val;
    v.set(&Tensor::from_vec(data, shape, &dev()).unwrap())
        .unwrap();
}

fn elem(v: &Var, i: usize) -> f64 {
    v.as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[i]
}

/// Checks d(Σ f()·R)/dθ for every tensor θ in `vars` (at most `max_tensors` of them, spread
/// evenly, when a model has many) against central differences. Returns the worst relative error.
fn check(name: &str, vars: Vec<(String, Var)>, max_tensors: usize, f: impl Fn() -> Tensor) -> f64 {
    let out = f();
    assert_eq!(
        out.dtype(),
        DType::F64,
        "{name}: model did not compute in f64"
    );
    let r = Tensor::randn(0f64, 1.0, out.dims(), &dev()).unwrap();
    let loss = |o: &Tensor| (o * &r).unwrap().sum_all().unwrap();
    let grads = loss(&out).backward().unwrap();
    let scalar = |t: Tensor| t.to_scalar::<f64>().unwrap();

    let stride = vars.len().div_ceil(max_tensors.max(1)).max(1);
    let mut worst = 0f64;
    for (k, (vname, var)) in vars.iter().enumerate() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient reached `{vname}`"));
        if k % stride != 0 {
            continue;
        }
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let gscale = g.iter().fold(0f64, |m, x| m.max(x.abs()));
        let n = g.len();
        let mut idx = vec![0, n / 3, n / 2, (2 * n) / 3, n - 1];
        idx.dedup();
        for i in idx {
            let x0 = elem(var, i);
            let eps = 1e-6;
            set_elem(var, i, x0 + eps);
            let lp = scalar(loss(&f()));
            set_elem(var, i, x0 - eps);
            let lm = scalar(loss(&f()));
            set_elem(var, i, x0);
            let num = (lp - lm) / (2.0 * eps);
            let diff = (g[i] - num).abs();
            // Floor 1e-6: exactly-zero gradients (e.g. CLIP k_proj bias, softmax-invariant) have O(1e-9) numeric noise.
            let rel = diff / num.abs().max(1e-2 * gscale).max(1e-6);
            assert!(
                diff <= 1e-7 + 1e-5 * num.abs().max(1e-2 * gscale),
                "{name}: `{vname}`[{i}] autograd {} vs numeric {num} (diff {diff:.3e})",
                g[i]
            );
            if rel > 1e-3 {
                println!("  {name}: `{vname}`[{i}] autograd {:.3e} numeric {num:.3e} (scale {gscale:.1e})", g[i]);
            }
            worst = worst.max(rel);
        }
    }
    println!(
        "{name}: {} tensors, worst relative error {worst:.2e}",
        vars.len()
    );
    worst
}

fn with_input(p: &Params, inputs: &[(&str, &Var)]) -> Vec<(String, Var)> {
    let mut v = p.vars();
    for (n, x) in inputs {
        v.push((n.to_string(), (*x).clone()));
    }
    v
}

#[test]
fn layer_norm_and_group_norm() {
    let p = params(1);
    let ln = LayerNorm::new(&p.pp("ln"), 6, 1e-5).unwrap();
    let x = input(&[2, 3, 6], 1);
    check("LayerNorm", with_input(&p, &[("x", &x)]), 99, || {
        ln.forward(x.as_tensor()).unwrap()
    });

    let p = params(2);
    let gn = GroupNorm::new(&p.pp("gn"), 3, 6, 1e-5).unwrap();
    let x = input(&[2, 6, 3, 4], 2);
    check("GroupNorm", with_input(&p, &[("x", &x)]), 99, || {
        gn.forward(x.as_tensor()).unwrap()
    });
}

fn attn_info(kind: AttnKind, context_dim: usize) -> AttnLayerInfo {
    AttnLayerInfo {
        name: "attn".into(),
        index: 0,
        kind,
        heads: 2,
        head_dim: 4,
        query_dim: 8,
        context_dim,
    }
}

#[test]
fn attention_self_and_cross() {
    let ctx = ForwardCtx::default();
    let p = params(3);
    let a = Attention::new(&p.pp("attn1"), attn_info(AttnKind::SelfAttn, 8)).unwrap();
    let x = input(&[2, 6, 8], 3);
    check("self-attention", with_input(&p, &[("x", &x)]), 99, || {
        a.forward(x.as_tensor(), None, &ctx, Some((2, 3))).unwrap()
    });

    let p = params(4);
    let a = Attention::new(&p.pp("attn2"), attn_info(AttnKind::Cross, 5)).unwrap();
    let x = input(&[2, 6, 8], 4);
    let c = input(&[2, 7, 5], 5);
    check(
        "cross-attention",
        with_input(&p, &[("x", &x), ("context", &c)]),
        99,
        || {
            a.forward(x.as_tensor(), Some(c.as_tensor()), &ctx, Some((2, 3)))
                .unwrap()
        },
    );
}

#[test]
fn resnet_block_and_sampling() {
    let p = params(5);
    let r = ResnetBlock2D::new(&p.pp("resnet"), 4, 6, Some(5), 2, 1e-5).unwrap();
    let x = input(&[2, 4, 4, 5], 6);
    let t = input(&[2, 5], 7);
    check(
        "ResnetBlock2D (+time, shortcut)",
        with_input(&p, &[("x", &x), ("temb", &t)]),
        99,
        || r.forward(x.as_tensor(), Some(t.as_tensor())).unwrap(),
    );

    for (asym, what) in [
        (false, "Downsample2D (UNet)"),
        (true, "Downsample2D (VAE pad)"),
    ] {
        let p = params(6);
        let d = Downsample2D::new(&p.pp("down"), 4, 4, asym).unwrap();
        let x = input(&[1, 4, 6, 4], 8);
        check(what, with_input(&p, &[("x", &x)]), 99, || {
            d.forward(x.as_tensor()).unwrap()
        });
    }

    let p = params(7);
    let u = Upsample2D::new(&p.pp("up"), 4, 4).unwrap();
    let x = input(&[1, 4, 3, 2], 9);
    check("Upsample2D", with_input(&p, &[("x", &x)]), 99, || {
        u.forward(x.as_tensor(), None).unwrap()
    });
}

#[test]
fn timestep_embedding_and_transformer_block() {
    let p = params(8);
    let te = TimestepEmbedding::new(&p.pp("time_embedding"), 6, 10).unwrap();
    let x = input(&[2, 6], 10);
    check(
        "TimestepEmbedding",
        with_input(&p, &[("x", &x)]),
        99,
        || te.forward(x.as_tensor()).unwrap(),
    );

    let p = params(9);
    let spec = AttnSpec {
        heads: 2,
        head_dim: 4,
        context_dim: 6,
    };
    let mut next = 0;
    let b = BasicTransformerBlock::new(&p.pp("tb"), &spec, &mut next).unwrap();
    let x = input(&[2, 6, 8], 11);
    let c = input(&[2, 5, 6], 12);
    let ctx = ForwardCtx::default();
    check(
        "BasicTransformerBlock",
        with_input(&p, &[("x", &x), ("context", &c)]),
        99,
        || {
            b.forward(x.as_tensor(), c.as_tensor(), &ctx, (2, 3))
                .unwrap()
        },
    );
}

#[test]
fn clip_text_model() {
    let cfg = ClipTextConfig {
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        max_position_embeddings: 10,
        ..ClipTextConfig::sd15()
    };
    let p = params(10);
    let m = ClipTextModel::new(&cfg, &p).unwrap();
    let ids = Tensor::new(
        &[[
            49406u32, 320, 1125, 49407, 49407, 49407, 49407, 49407, 49407, 49407,
        ]],
        &dev(),
    )
    .unwrap();
    check("CLIP text model (2 layers)", p.vars(), 99, || {
        let o = m.forward(&ids).unwrap();
        // Both outputs SD uses: last hidden state and penultimate layer.
        Tensor::cat(&[o.last_hidden_state, o.penultimate], 2).unwrap()
    });
}

#[test]
fn vae_decoder() {
    let mut cfg = Preset::by_name("tiny").unwrap().vae;
    cfg.block_out_channels = vec![4, 8];
    cfg.norm_num_groups = 2;
    let p = params(11);
    let vae = AutoencoderKL::new(&cfg, &p).unwrap();
    let decoder_vars: Vec<_> = p
        .vars()
        .into_iter()
        .filter(|(n, _)| n.starts_with("decoder.") || n.starts_with("post_quant_conv."))
        .collect();
    let z = input(&[1, 4, 3, 4], 13);
    let mut vars = decoder_vars;
    vars.push(("z".into(), z.clone()));
    check("VAE decoder", vars, 40, || {
        vae.decode(z.as_tensor()).unwrap()
    });
}

#[test]
fn whole_tiny_unet() {
    let mut cfg = Preset::by_name("tiny").unwrap().unet;
    cfg.block_out_channels = vec![4, 8];
    cfg.norm_num_groups = Some(2);
    cfg.cross_attention_dim = anodiff::sd::unet::PerBlock::One(6);
    let p = params(12);
    let unet = UNet2DConditionModel::new(&cfg, &p).unwrap();
    let x = input(&[2, 4, 4, 4], 14);
    let c = input(&[2, 3, 6], 15);
    let t = Tensor::new(&[10f64, 700.0], &dev()).unwrap();
    let ctx = ForwardCtx::default();
    check(
        "UNet (tiny, every block type)",
        with_input(&p, &[("sample", &x), ("context", &c)]),
        30,
        || {
            unet.forward(x.as_tensor(), &t, c.as_tensor(), &ctx)
                .unwrap()
        },
    );
}
