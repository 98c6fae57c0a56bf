//! `anodiff bench unet`: a UNet forward (and, once LoRA training is wired, a LoRA step) of a preset
//! with random weights — no files needed — timed as the median of several runs.

use super::{median_ms, peak_rss_mb};
use crate::error::Result;
use crate::nn::Params;
use crate::sd::attention::ForwardCtx;
use crate::sd::presets::Preset;
use crate::sd::unet::UNet2DConditionModel;
use candle_core::{Device, Tensor};

#[derive(Clone, Debug)]
pub struct UnetBenchOptions {
    pub preset: String,
    /// Image side in pixels (the latent is size / VAE factor).
    pub size: usize,
    pub batch: usize,
    /// Timed repetitions after one warm-up run.
    pub repeats: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct UnetBenchResult {
    pub preset: String,
    pub size: usize,
    pub batch: usize,
    pub repeats: usize,
    pub parameters: usize,
    /// Median milliseconds of one forward pass.
    pub unet_fwd: f64,
    pub peak_rss_mb: f64,
}

pub fn bench_unet(o: &UnetBenchOptions, progress: &mut dyn FnMut(&str)) -> Result<UnetBenchResult> {
    let dev = Device::Cpu;
    let preset = Preset::by_name(&o.preset)?;
    progress("building random weights");
    // Frozen weights: inference holds no Vars (the trainer decides what is trainable).
    let p = Params::fresh(0, &dev).with_trainable(|_| false);
    let unet = UNet2DConditionModel::new(&preset.unet, &p)?;
    let parameters = p.parameter_count();
    let lat = o.size / preset.vae.downscale_factor();
    let x = Tensor::randn(
        0f32,
        1.0,
        (o.batch, preset.unet.in_channels, lat, lat),
        &dev,
    )?;
    let ctx_dim = preset.unet.cross_attention_dim.get(0);
    let ehs = Tensor::randn(0f32, 1.0, (o.batch, 77, ctx_dim), &dev)?;
    let t = Tensor::full(500f32, o.batch, &dev)?;
    let ctx = ForwardCtx::default();
    let run = || -> Result<()> {
        let y = unet.forward(&x, &t, &ehs, &ctx)?;
        // Force the computation (candle is eager, but keep the result alive until here).
        let _ = y.dims();
        Ok(())
    };
    progress("warm-up");
    run()?;
    let mut times = Vec::with_capacity(o.repeats);
    for i in 0..o.repeats.max(1) {
        progress(&format!("run {}/{}", i + 1, o.repeats.max(1)));
        let t0 = std::time::Instant::now();
        run()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(UnetBenchResult {
        preset: o.preset.clone(),
        size: o.size,
        batch: o.batch,
        repeats: times.len(),
        parameters,
        unet_fwd: median_ms(&mut times),
        peak_rss_mb: peak_rss_mb(),
    })
}
