//! How much Winograd's rounding moves the LoRA gradients of a full SD-1.5 UNet step (random
//! weights, 256 px, batch 1, rank-32 LoRA with random `up` so every LoRA gradient is non-zero):
//! each `ANODIFF_WINOGRAD` mode against im2col. `cargo run --release --example winograd_training_error`.
use anodiff::nn::Params;
use anodiff::sd::attention::ForwardCtx;
use anodiff::sd::lora::{Lora, LoraConfig};
use anodiff::sd::presets::Preset;
use anodiff::sd::unet::UNet2DConditionModel;
use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    anodiff::runtime::tune_allocator();
    anodiff::runtime::set_thread_count(None);
    let dev = Device::Cpu;
    let preset = Preset::by_name("sd15")?;
    let p = Params::fresh(0, &dev).with_trainable(|_| false);
    let unet = UNet2DConditionModel::new(&preset.unet, &p)?;
    let lora = Lora::attach_unet(&unet, &LoraConfig::unet(32))?;
    for l in lora.layers() {
        let up = l.sets[0].up.as_tensor();
        l.sets[0]
            .up
            .set(&(Tensor::randn(0f32, 1.0, up.dims(), &dev)? * 0.05)?)?;
    }
    let x = Tensor::randn(0f32, 1.0, (1, 4, 32, 32), &dev)?;
    let ehs = Tensor::randn(0f32, 1.0, (1, 77, 768), &dev)?;
    let t = Tensor::full(500f32, 1, &dev)?;
    let target = Tensor::randn(0f32, 1.0, (1, 4, 32, 32), &dev)?;
    let vars = lora.vars();
    let grads = |mode: &str| -> anyhow::Result<(Vec<Vec<f32>>, Vec<f32>)> {
        std::env::set_var("ANODIFF_WINOGRAD", mode);
        let t0 = std::time::Instant::now();
        let y = unet.forward(&x, &t, &ehs, &ForwardCtx::default())?;
        let store = (&y - &target)?.sqr()?.mean_all()?.backward()?;
        let g = vars
            .iter()
            .map(|(_, v)| Ok(store.get(v).unwrap().flatten_all()?.to_vec1::<f32>()?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!(
            "mode {mode}: step {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        Ok((g, y.flatten_all()?.to_vec1::<f32>()?))
    };
    let (g0, y0) = grads("0")?;
    for mode in ["2", "4"] {
        let (g, y) = grads(mode)?;
        // Per tensor: max |Δ| / max |reference|; report the worst tensor and the median.
        let mut errs: Vec<f32> = g
            .iter()
            .zip(&g0)
            .map(|(a, b)| {
                let d = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                d / b.iter().map(|v| v.abs()).fold(1e-30, f32::max)
            })
            .collect();
        errs.sort_by(f32::total_cmp);
        let ey = y
            .iter()
            .zip(&y0)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
            / y0.iter().map(|v| v.abs()).fold(1e-30, f32::max);
        println!(
            "mode {mode} vs im2col: output {ey:.2e}; LoRA grads over {} tensors: median {:.2e}, worst {:.2e}",
            errs.len(),
            errs[errs.len() / 2],
            errs[errs.len() - 1]
        );
    }
    Ok(())
}
