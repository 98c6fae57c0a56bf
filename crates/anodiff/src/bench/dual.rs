//! `anodiff bench dual`: one full DualAnoDiff training step of a preset with random weights — no
//! files needed — timed as the median of several steps after a warm-up.
//!
//! The step is the training computation itself ([`DualLoss::loss`] on a random [`PairBatch`]):
//! frozen VAE encode of the whole / part / background images (posterior mean, no gradient), the
//! prompts through the text encoder with its LoRA, the BCM reference pass, the main pass over the
//! interleaved rows, the MSE, backward, global-norm clipping at 1.0 (the trainer's default) and
//! AdamW on every dual variable (both UNet LoRA sets, the text-encoder LoRA, SAIM, BCM).
//! `tools/bench_reference.py dual` runs the same step in PyTorch and reports the same keys.

use super::{median_ms, peak_rss_mb};
use crate::dual::pairs::PairBatch;
use crate::dual::train::DualLoss;
use crate::dual::{DualConfig, DualModel};
use crate::error::{Error, Result};
use crate::sd::pipeline::StableDiffusion;
use crate::sd::presets::Preset;
use crate::train::{AdamW, AdamWConfig, Grads};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use std::time::Instant;

/// What `anodiff bench dual` times.
#[derive(Clone, Debug)]
pub struct DualBenchOptions {
    /// Preset name (see [`Preset::by_name`]).
    pub preset: String,
    /// Image side in pixels.
    pub size: usize,
    /// Training pairs per step (the UNet's main pass sees twice as many rows).
    pub pairs: usize,
    /// Timed steps after one warm-up step.
    pub repeats: usize,
    /// The dual model's settings (rank, SAIM, BCM, text-encoder LoRA, BCM width).
    pub config: DualConfig,
}

/// Result of [`bench_dual`], serialised with the keys `tools/bench_reference.py dual` uses.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DualBenchResult {
    /// Preset name.
    pub preset: String,
    /// Image side in pixels.
    pub size: usize,
    /// Pairs per step.
    pub pairs: usize,
    /// Timed steps actually run (at least one).
    pub repeats: usize,
    /// Worker threads of the numeric kernels.
    pub threads: usize,
    /// Parameter count of the (frozen) UNet.
    pub parameters: usize,
    /// Median milliseconds of one whole training step.
    pub dual_step: f64,
    /// Median milliseconds of the step's forward part: VAE encode, text encode, reference and main
    /// passes, loss.
    pub dual_fwd: f64,
    /// Median milliseconds of the backward pass.
    pub dual_bwd: f64,
    /// Median milliseconds of gradient clipping and the AdamW update.
    pub dual_opt: f64,
    /// Trainable parameters of both UNet LoRA sets.
    pub lora_params: usize,
    /// Trainable parameters of the text-encoder LoRA.
    pub text_lora_params: usize,
    /// Trainable parameters of SAIM.
    pub saim_params: usize,
    /// Trainable parameters of BCM.
    pub bcm_params: usize,
    /// Peak resident set size of the process in MiB.
    pub peak_rss_mb: f64,
}

/// Builds the preset with frozen random weights plus a fresh dual model and times training steps;
/// `progress` receives one line per phase.
pub fn bench_dual(o: &DualBenchOptions, progress: &mut dyn FnMut(&str)) -> Result<DualBenchResult> {
    let dev = Device::Cpu;
    let preset = Preset::by_name(&o.preset)?;
    if o.pairs == 0 || !o.size.is_multiple_of(preset.downscale_factor()) {
        return Err(Error::invalid(format!(
            "bench dual: need at least one pair and a size divisible by {}",
            preset.downscale_factor()
        )));
    }
    progress("building random weights");
    let sd = StableDiffusion::from_preset_frozen(&preset, 0, &dev)?;
    let model = DualModel::fresh(&sd.unet, &sd.text_encoder, &o.config, &dev)?;
    model.install(&sd.unet, &sd.text_encoder);
    model.set_training(true);
    let counts = DualModel::parameter_counts(&preset.unet, &preset.text, &o.config)?;
    let vars = model.vars();
    let trainable: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    // The counts are computed from shapes; a mismatch means they describe another model.
    if trainable != counts.total() {
        return Err(Error::invalid(format!(
            "bench dual: {trainable} trainable parameters, but parameter_counts says {}",
            counts.total()
        )));
    }
    let batch = random_pairs(o.pairs, o.size, &dev)?;
    let loss_fn = DualLoss::new(&sd, &model)?;
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut step = || -> Result<[f64; 3]> {
        let t0 = Instant::now();
        let loss = loss_fn.loss(&batch, &mut rng)?;
        // Reading the value is what the trainer does (finite check, logging).
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(Error::invalid(format!("bench dual: loss is {value}")));
        }
        let t1 = Instant::now();
        let mut grads = Grads::from_store(&loss.backward()?, &vars);
        let t2 = Instant::now();
        grads.clip_global_norm(1.0)?;
        opt.step(&grads, 1e-4)?;
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok([ms(t0, t1), ms(t1, t2), ms(t2, t3)])
    };
    progress("warm-up");
    step()?;
    let runs = o.repeats.max(1);
    let (mut total, mut fwd, mut bwd, mut upd) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        progress(&format!("step {}/{runs}", i + 1));
        let [f, b, u] = step()?;
        total.push(f + b + u);
        fwd.push(f);
        bwd.push(b);
        upd.push(u);
    }
    Ok(DualBenchResult {
        preset: o.preset.clone(),
        size: o.size,
        pairs: o.pairs,
        repeats: runs,
        threads: rayon::current_num_threads(),
        parameters: preset.parameter_counts()?.unet,
        dual_step: median_ms(&mut total),
        dual_fwd: median_ms(&mut fwd),
        dual_bwd: median_ms(&mut bwd),
        dual_opt: median_ms(&mut upd),
        lora_params: counts.unet_lora,
        text_lora_params: counts.text_encoder_lora,
        saim_params: counts.saim,
        bcm_params: counts.bcm,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// Random whole / part / background images in [-1, 1] (the part zero outside a random mask, as
/// the pair sampler makes it); the timings do not depend on the pixel values.
fn random_pairs(n: usize, size: usize, dev: &Device) -> Result<PairBatch> {
    let img = || Tensor::rand(-1f32, 1.0, (n, 3, size, size), dev);
    let whole = img()?;
    let mask = Tensor::rand(0f32, 1.0, (n, 1, size, size), dev)?
        .ge(0.5)?
        .to_dtype(DType::F32)?;
    let part = whole.broadcast_mul(&mask)?;
    Ok(PairBatch {
        whole,
        part,
        mask,
        background: img()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step runs end to end on the tiny preset and reports consistent counts.
    #[test]
    fn tiny_step_runs() {
        let o = DualBenchOptions {
            preset: "tiny".into(),
            size: 32,
            pairs: 1,
            repeats: 1,
            config: DualConfig {
                rank: 4,
                bcm_hidden: 8,
                ..Default::default()
            },
        };
        let r = bench_dual(&o, &mut |_| {}).unwrap();
        assert_eq!(r.repeats, 1);
        assert!(r.lora_params > 0 && r.text_lora_params > 0 && r.saim_params > 0);
        assert!(r.bcm_params > 0 && r.parameters > 0);
        assert!(r.dual_step.is_finite());
    }
}
