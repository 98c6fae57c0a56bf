//! `anodiff bench small`: training steps of the small networks everything CPU-scale trains —
//! random weights, no files — as the median of several steps after warm-up steps.
//!
//! Keys (milliseconds per step: forward, backward, optimiser update), the same in
//! `tools/bench_reference.py small`:
//! - `locnet64_step`: the localisation U-Net ([`LocalisationNet`]) at 64 px, width 8, batch 8 (the
//!   `cpu` protocol's shape);
//! - `locnet128_step`: the same net at 128 px, width 16, batch 16;
//! - `small_unet_step`: the `small` preset's UNet at its 32 px, batch 8 (its pretraining batch),
//!   v-target MSE at random timesteps, conditioning `[B, 77, 64]` drawn at random (the text encoder
//!   is not part of the step).
//!
//! The localisation steps use its training loss (focal, γ = 2, on random masks); every step is
//! AdamW with weight decay 0 (= Adam) over all the network's parameters. Parameter counts are
//! reported so the two sides can be checked to build the same networks.

use super::{median_ms, peak_rss_mb};
use crate::error::Result;
use crate::eval::localisation::{focal_loss, LocalisationNet};
use crate::nn::Params;
use crate::runtime::Lanes;
use crate::sd::attention::ForwardCtx;
use crate::sd::presets::Preset;
use crate::sd::unet::UNet2DConditionModel;
use crate::train::{micro_batch_size, AdamW, AdamWConfig, Grads};
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

/// What `anodiff bench small` times.
#[derive(Clone, Debug)]
pub struct SmallBenchOptions {
    /// Timed steps per network (median reported).
    pub steps: usize,
    /// Untimed steps first (allocator and caches warm up).
    pub warmup: usize,
    /// Only these keys (empty: all).
    pub only: Vec<String>,
    /// Each batch as this many micro-batches side by side, one per core, gradients added
    /// (what `pretrain --micro-batches` does; 1: the batch at once). Must divide every batch.
    pub micro_batches: usize,
}

impl Default for SmallBenchOptions {
    fn default() -> Self {
        Self {
            steps: 25,
            warmup: 5,
            only: Vec::new(),
            micro_batches: 1,
        }
    }
}

/// Result of [`bench_small`], serialised with the keys of `tools/bench_reference.py small`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SmallBenchResult {
    /// Worker threads of the numeric kernels.
    pub threads: usize,
    /// Timed steps per network.
    pub repeats: usize,
    /// Micro-batches each batch was computed as (side by side; 1: the batch at once).
    pub micro_batches: usize,
    /// Median ms of a localisation-net step at 64 px, width 8, batch 8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locnet64_step: Option<f64>,
    /// Its parameter count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locnet64_params: Option<usize>,
    /// Median ms of a localisation-net step at 128 px, width 16, batch 16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locnet128_step: Option<f64>,
    /// Its parameter count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locnet128_params: Option<usize>,
    /// Median ms of a `small` UNet training step (32 px, batch 8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub small_unet_step: Option<f64>,
    /// Its parameter count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub small_unet_params: Option<usize>,
    /// Process peak resident set size.
    pub peak_rss_mb: f64,
}

/// Every key [`bench_small`] can time.
pub const KEYS: [&str; 3] = ["locnet64_step", "locnet128_step", "small_unet_step"];

/// Runs `warmup` then `steps` timed calls of `step`; the median in ms.
fn time_steps(
    o: &SmallBenchOptions,
    what: &str,
    progress: &mut dyn FnMut(&str),
    mut step: impl FnMut() -> Result<()>,
) -> Result<f64> {
    for i in 0..o.warmup {
        progress(&format!("{what}: warm-up {}/{}", i + 1, o.warmup));
        step()?;
    }
    let mut times = Vec::with_capacity(o.steps);
    for i in 0..o.steps.max(1) {
        progress(&format!("{what}: step {}/{}", i + 1, o.steps.max(1)));
        let t0 = Instant::now();
        step()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median_ms(&mut times))
}

/// Times training steps of the network built from `p` (all its parameters trainable): `loss`
/// of each micro-batch (its index), backward, AdamW with weight decay 0. Returns (median ms,
/// parameter count).
fn time_training(
    o: &SmallBenchOptions,
    what: &str,
    p: &Params,
    progress: &mut dyn FnMut(&str),
    loss: impl Fn(usize) -> Result<Tensor> + Sync,
) -> Result<(f64, usize)> {
    let vars = p.vars();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            lr: 1e-4,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )?;
    let k = o.micro_batches.max(1);
    let lanes = Lanes::new(k.min(rayon::current_num_threads()))
        .map_err(|e| crate::error::Error::invalid(format!("starting threads: {e}")))?;
    let ms = time_steps(o, what, progress, || {
        let mut all = lanes
            .map(k, |i| -> Result<Grads> {
                Ok(Grads::from_store(&loss(i)?.backward()?, &vars))
            })
            .into_iter();
        let mut grads = all.next().expect("k >= 1")?;
        if k > 1 {
            for other in all {
                grads.accumulate(other?)?;
            }
            grads.scale(1.0 / k as f64)?;
        }
        opt.step(&grads, 1e-4)?;
        Ok(())
    })?;
    Ok((ms, p.parameter_count()))
}

/// Rows `i·n/k .. (i+1)·n/k` of `t` (micro-batch `i` of `k`).
fn micro(t: &Tensor, i: usize, k: usize) -> Result<Tensor> {
    let n = t.dim(0)?;
    Ok(t.narrow(0, i * n / k, n / k)?)
}

/// One localisation-net training step at `size` px, `width`, `batch`: (median ms, parameters).
fn locnet(
    o: &SmallBenchOptions,
    what: &str,
    size: usize,
    width: usize,
    batch: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<(f64, usize)> {
    let dev = Device::Cpu;
    let p = Params::fresh(0, &dev);
    let net = LocalisationNet::new(&p, width, 3)?;
    let x = Tensor::rand(0f32, 1.0, (batch, 3, size, size), &dev)?;
    // About a tenth of the pixels anomalous, as a defect-heavy batch.
    let mask = Tensor::rand(0f32, 1.0, (batch, 1, size, size), &dev)?
        .ge(0.9)?
        .to_dtype(DType::F32)?;
    let k = o.micro_batches.max(1);
    time_training(o, what, &p, progress, |i| {
        Ok(focal_loss(
            &net.forward(&micro(&x, i, k)?)?,
            &micro(&mask, i, k)?,
            2.0,
        )?)
    })
}

/// One training step of the `small` preset's UNet: (median ms, parameters).
fn small_unet(o: &SmallBenchOptions, progress: &mut dyn FnMut(&str)) -> Result<(f64, usize)> {
    let dev = Device::Cpu;
    let preset = Preset::by_name("small")?;
    let p = Params::fresh(0, &dev);
    let unet = UNet2DConditionModel::new(&preset.unet, &p)?;
    let (b, s) = (8, preset.resolution);
    let x = Tensor::randn(0f32, 1.0, (b, preset.unet.in_channels, s, s), &dev)?;
    let target = Tensor::randn(0f32, 1.0, x.dims(), &dev)?;
    let ehs = Tensor::randn(
        0f32,
        1.0,
        (b, 77, preset.unet.cross_attention_dim.get(0)),
        &dev,
    )?;
    let t = Tensor::new(&[999f32, 870., 740., 610., 480., 350., 220., 90.], &dev)?;
    let ctx = ForwardCtx::default();
    let k = o.micro_batches.max(1);
    time_training(o, "small_unet_step", &p, progress, |i| {
        let out = unet.forward(
            &micro(&x, i, k)?,
            &micro(&t, i, k)?,
            &micro(&ehs, i, k)?,
            &ctx,
        )?;
        Ok((out - micro(&target, i, k)?)?.sqr()?.mean_all()?)
    })
}

/// Times the small-network training steps (see the module doc).
pub fn bench_small(
    o: &SmallBenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SmallBenchResult> {
    if let Some(k) = o.only.iter().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(crate::error::Error::invalid(format!(
            "unknown key `{k}` (known: {})",
            KEYS.join(", ")
        )));
    }
    for batch in [8, 16] {
        micro_batch_size("bench small", batch, o.micro_batches)?;
    }
    let want = |k: &str| o.only.is_empty() || o.only.iter().any(|x| x == k);
    let mut r = SmallBenchResult {
        threads: rayon::current_num_threads(),
        repeats: o.steps.max(1),
        micro_batches: o.micro_batches,
        ..Default::default()
    };
    if want("locnet64_step") {
        let (ms, n) = locnet(o, "locnet64_step", 64, 8, 8, progress)?;
        (r.locnet64_step, r.locnet64_params) = (Some(ms), Some(n));
    }
    if want("locnet128_step") {
        let (ms, n) = locnet(o, "locnet128_step", 128, 16, 16, progress)?;
        (r.locnet128_step, r.locnet128_params) = (Some(ms), Some(n));
    }
    if want("small_unet_step") {
        let (ms, n) = small_unet(o, progress)?;
        (r.small_unet_step, r.small_unet_params) = (Some(ms), Some(n));
    }
    r.peak_rss_mb = peak_rss_mb();
    Ok(r)
}
