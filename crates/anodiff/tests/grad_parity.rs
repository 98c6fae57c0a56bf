//! Gradient parity with PyTorch autograd on a tiny diffusers UNet (tools/parity/make_grad_fixtures.py):
//! d(Σ unet(sample, t, ehs)·R) with respect to the inputs and to parameters of every block kind.
//! Tolerance: max|ours − torch| ≤ 5e-4 · max|torch| per tensor. Both sides run in f32, and weight
//! gradients are long sums (over batch, tokens and pixels) with cancellation, so they carry more
//! rounding than forward outputs; exactness of the formulas is proven in f64 by grad_check.rs.

use anodiff::nn::tensor_files::read_safetensors;
use anodiff::nn::{Params, TensorFiles};
use anodiff::sd::attention::ForwardCtx;
use anodiff::sd::unet::{UNet2DConditionModel, UNetConfig};
use anodiff::sd::weights::Component;
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap()
}

#[test]
fn unet_gradients_match_pytorch() {
    let dev = Device::Cpu;
    let r: HashMap<String, Tensor> = read_safetensors(
        std::path::Path::new(&format!("{FIX}/grad/unet_sd1.safetensors")),
        &dev,
    )
    .unwrap()
    .into_iter()
    .collect();
    let wanted: Vec<String> = r
        .keys()
        .filter_map(|k| k.strip_prefix("grad.param.").map(String::from))
        .collect();
    assert!(wanted.len() >= 15);

    let c = Component::at(format!("{FIX}/unet/sd1/unet"));
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
