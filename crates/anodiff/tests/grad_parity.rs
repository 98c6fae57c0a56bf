//! Gradient parity with PyTorch autograd on a tiny diffusers UNet (tools/parity/make_grad_fixtures.py):
//! d(Σ unet(sample, t, ehs)·R) with respect to the inputs and to parameters of every block kind.
//! Tolerance: max|ours − torch| ≤ 5e-4 · max|torch| per tensor. Both sides run in f32, and weight
//! gradients are long sums (over batch, tokens and pixels) with cancellation, so they carry more
//! rounding than forward outputs; exactness of the formulas is proven in f64 by grad_check.rs.

mod common;

use anodiff::nn::{Params, TensorFiles};
use anodiff::sd::attention::ForwardCtx;
use anodiff::sd::unet::{UNet2DConditionModel, UNetConfig};
use anodiff::sd::weights::Component;
use candle_core::{Device, Tensor, Var};
use common::{fixtures, rel, tensors};
use std::collections::HashMap;

#[test]
fn unet_gradients_match_pytorch() {
    let dev = Device::Cpu;
    let r = tensors(&fixtures("grad/unet_sd1.safetensors"));
    let wanted: Vec<String> = r
        .keys()
        .filter_map(|k| k.strip_prefix("grad.param.").map(String::from))
        .collect();
    assert!(wanted.len() >= 15);

    let c = Component::at(fixtures("unet/sd1/unet"));
    let cfg: UNetConfig = c.config().unwrap();
    let files = TensorFiles::load(&c.weight_files().unwrap(), &dev).unwrap();
    let w = wanted.clone();
    let p = Params::from_files(files, &dev).with_trainable(move |n| w.iter().any(|x| x == n));
    let unet = UNet2DConditionModel::new(&cfg, &p).unwrap();
    let vars: HashMap<String, Var> = p.vars().into_iter().collect();
    assert_eq!(
        vars.len(),
        wanted.len(),
        "every selected parameter is a Var"
    );

    let sample = Var::from_tensor(&r["sample"]).unwrap();
    let ehs = Var::from_tensor(&r["encoder_hidden_states"]).unwrap();
    let out = unet
        .forward(
            sample.as_tensor(),
            &r["timesteps"],
            ehs.as_tensor(),
            &ForwardCtx::default(),
        )
        .unwrap();
    let e = rel(&out, &r["out"]);
    println!("forward: rel {e:.2e}");
    assert!(e <= 1e-4);
    let grads = (out * &r["r"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();

    let mut worst = 0f32;
    let mut check = |name: &str, t: &Tensor, reference: &Tensor| {
        let g = grads
            .get(t)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let e = rel(g, reference);
        println!("{name}: rel {e:.2e}");
        assert!(e <= 5e-4, "{name}: relative error {e:.3e} > 5e-4");
        worst = worst.max(e);
    };
    check("sample", sample.as_tensor(), &r["grad.sample"]);
    check(
        "encoder_hidden_states",
        ehs.as_tensor(),
        &r["grad.encoder_hidden_states"],
    );
    for n in &wanted {
        check(n, vars[n].as_tensor(), &r[&format!("grad.param.{n}")]);
    }
    println!("worst gradient relative error: {worst:.2e}");
}

/// The same UNet frozen, with the LoRA fixture loaded (diffusers+peft on the PyTorch side):
/// gradients of lora_A / lora_B of self- and cross-attention layers in down, mid and up blocks.
#[test]
fn unet_lora_gradients_match_pytorch_peft() {
    use anodiff::sd::lora::Lora;
    let dev = Device::Cpu;
    let r = tensors(&fixtures("grad/unet_sd1_lora.safetensors"));
    let unet = UNet2DConditionModel::load(&Component::at(fixtures("unet/sd1/unet")), &dev).unwrap();
    let lora = Lora::load_unet(&unet, &fixtures("lora/pytorch_lora_weights.safetensors")).unwrap();
    // Ours: `unet.<module>.lora_A.set0.weight`; the fixture: `grad.lora.<module>.lora_A.weight`.
    let vars: HashMap<String, Var> = lora
        .vars()
        .into_iter()
        .map(|(n, v)| {
            let n = n.strip_prefix("unet.").unwrap_or(&n).replace(".set0.", ".");
            (n, v)
        })
        .collect();
    let sample = Var::from_tensor(&r["sample"]).unwrap();
    let out = unet
        .forward(
            sample.as_tensor(),
            &r["timesteps"],
            &r["encoder_hidden_states"],
            &ForwardCtx::default(),
        )
        .unwrap();
    let e = rel(&out, &r["out"]);
    println!("forward with LoRA: rel {e:.2e}");
    assert!(e <= 1e-4);
    let grads = (out * &r["r"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut worst = rel(grads.get(sample.as_tensor()).unwrap(), &r["grad.sample"]);
    let mut n = 0;
    for (k, reference) in &r {
        let Some(name) = k.strip_prefix("grad.lora.") else {
            continue;
        };
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("no LoRA variable for {name}"));
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let e = rel(g, reference);
        assert!(e <= 5e-4, "{name}: relative error {e:.3e} > 5e-4");
        worst = worst.max(e);
        n += 1;
    }
    assert!(n >= 24);
    println!("{n} LoRA gradients + input gradient: worst relative error {worst:.2e}");
}

/// Memory: in a LoRA step no frozen weight matrix or convolution kernel gets a gradient buffer
/// (candle computes one for every operand by default; `nn::frozen` and the conv kernel skip them).
#[test]
fn lora_step_computes_no_frozen_weight_gradients() {
    use anodiff::sd::lora::{Lora, LoraConfig};
    let dev = Device::Cpu;
    let c = Component::at(fixtures("unet/sd1/unet"));
    let cfg: UNetConfig = c.config().unwrap();
    let files = TensorFiles::load(&c.weight_files().unwrap(), &dev).unwrap();
    let frozen: Vec<(String, Tensor)> = files
        .names()
        .map(|n| (n.to_string(), files.get(n).unwrap().0.clone()))
        .collect();
    let p = Params::from_files(files, &dev);
    let unet = UNet2DConditionModel::new(&cfg, &p).unwrap();
    let lora = Lora::attach_unet(&unet, &LoraConfig::unet(4)).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
    let ehs = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev).unwrap();
    let t = Tensor::new(&[10f32, 500.0], &dev).unwrap();
    let y = unet.forward(&x, &t, &ehs, &ForwardCtx::default()).unwrap();
    let grads = y.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    for (n, v) in lora.vars() {
        assert!(
            grads.get(v.as_tensor()).is_some(),
            "LoRA `{n}` got no gradient"
        );
    }
    let mut big = Vec::new();
    let (mut small_n, mut small_elems) = (0, 0);
    for (n, t) in &frozen {
        if grads.get(t).is_some() {
            if t.rank() >= 2 {
                big.push(n.clone());
            } else {
                small_n += 1;
                small_elems += t.elem_count();
            }
        }
    }
    let total: usize = frozen.iter().map(|(_, t)| t.elem_count()).sum();
    println!(
        "frozen tensors with a gradient: {} matrices/kernels, {small_n} vectors ({small_elems} of {total} elements)",
        big.len()
    );
    assert!(big.is_empty(), "frozen weights got gradients: {big:?}");
}
