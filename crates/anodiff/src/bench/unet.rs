//! `anodiff bench unet`: a UNet forward pass, or a LoRA training step, of a preset with random
//! weights — no files needed — timed as the median of several runs.

use super::{median_ms, peak_rss_mb};
use crate::error::Result;
use crate::nn::Params;
use crate::sd::attention::ForwardCtx;
use crate::sd::lora::{Lora, LoraConfig};
use crate::sd::presets::Preset;
use crate::sd::unet::UNet2DConditionModel;
use crate::train::{AdamW, AdamWConfig, Grads};
use candle_core::{Device, Tensor};

/// What `anodiff bench unet` times.
#[derive(Clone, Debug)]
pub struct UnetBenchOptions {
    /// Preset name (see [`Preset::by_name`]).
    pub preset: String,
    /// Image side in pixels (the latent is size / VAE factor).
    pub size: usize,
    /// Batch size of the timed input.
    pub batch: usize,
    /// Timed repetitions after one warm-up run.
    pub repeats: usize,
    /// Time a LoRA training step (rank 32 on every attention projection, UNet frozen, MSE loss,
    /// backward, AdamW) instead of a forward pass.
    pub train_lora: bool,
}

/// Result of [`bench_unet`], serialised with the keys `tools/bench_reference.py unet` uses.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnetBenchResult {
    /// Preset name.
    pub preset: String,
    /// Image side in pixels.
    pub size: usize,
    /// Batch size.
    pub batch: usize,
    /// Timed repetitions actually run (at least one).
    pub repeats: usize,
    /// Parameter count of the UNet.
    pub parameters: usize,
    /// Median milliseconds of one forward pass (absent with `train_lora`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unet_fwd: Option<f64>,
    /// Median milliseconds of one LoRA training step (with `train_lora`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_step: Option<f64>,
    /// Trainable LoRA parameters (with `train_lora`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_params: Option<usize>,
    /// Peak resident set size of the process in MiB.
    pub peak_rss_mb: f64,
}

/// Builds the preset's UNet with random weights and times a forward pass or a LoRA step;
/// `progress` receives one line per phase.
pub fn bench_unet(o: &UnetBenchOptions, progress: &mut dyn FnMut(&str)) -> Result<UnetBenchResult> {
    let dev = Device::Cpu;
    let preset = Preset::by_name(&o.preset)?;
    progress("building random weights");
    // Frozen weights: inference holds no Vars (the trainer decides what is trainable).
    let p = Params::fresh(0, &dev).with_trainable(|_| false);
    let unet = UNet2DConditionModel::new(&preset.unet, &p)?;
    let parameters = p.parameter_count();
    let lat = o.size / preset.downscale_factor();
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
    let mut lora_params = None;
    let mut step: Box<dyn FnMut() -> Result<()>> = if o.train_lora {
        let lora = Lora::attach_unet(&unet, &LoraConfig::unet(32))?;
        let vars = lora.vars();
        lora_params = Some(vars.iter().map(|(_, v)| v.elem_count()).sum());
        let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
        let target = Tensor::randn(0f32, 1.0, x.dims(), &dev)?;
        let (unet, x, t, ehs, ctx) = (&unet, &x, &t, &ehs, &ctx);
        Box::new(move || {
            let _keep = &lora;
            let y = unet.forward(x, t, ehs, ctx)?;
            let loss = (y - &target)?.sqr()?.mean_all()?;
            let grads = Grads::from_store(&loss.backward()?, &vars);
            opt.step(&grads, 1e-4)?;
            Ok(())
        })
    } else {
        Box::new(|| {
            let y = unet.forward(&x, &t, &ehs, &ctx)?;
            let _ = y.dims();
            Ok(())
        })
    };
    progress("warm-up");
    step()?;
    let mut times = Vec::with_capacity(o.repeats);
    for i in 0..o.repeats.max(1) {
        progress(&format!("run {}/{}", i + 1, o.repeats.max(1)));
        let t0 = std::time::Instant::now();
        step()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let median = median_ms(&mut times);
    Ok(UnetBenchResult {
        preset: o.preset.clone(),
        size: o.size,
        batch: o.batch,
        repeats: times.len(),
        parameters,
        unet_fwd: (!o.train_lora).then_some(median),
        lora_step: o.train_lora.then_some(median),
        lora_params,
        peak_rss_mb: peak_rss_mb(),
    })
}
