//! DreamBooth-style LoRA fine-tune of a Stable Diffusion UNet on a folder of images with one
//! prompt: the job behind `anodiff lora-train`, and the pattern DualAnoDiff's two-branch training
//! follows (same engine, more LoRA sets, more losses).

use super::diffusion::DiffusionLoss;
use super::optim::AdamWConfig;
use super::schedule::LrSchedule;
use super::trainer::{StepStats, TrainConfig, Trainer};
use crate::data::folder::ImageFolder;
use crate::error::{Error, Result};
use crate::sd::attention::ForwardCtx;
use crate::sd::lora::{Lora, LoraConfig};
use crate::sd::pipeline::StableDiffusion;
use candle_core::{Device, Tensor};
use std::path::PathBuf;

/// File name of the trained LoRA inside the output folder (what diffusers' `load_lora_weights`
/// looks for by default).
pub const LORA_FILE: &str = "pytorch_lora_weights.safetensors";

/// What `anodiff lora-train` does.
#[derive(Clone, Debug)]
pub struct LoraTrainOptions {
    /// Folder of training images.
    pub data: PathBuf,
    /// The one prompt every image is trained with.
    pub prompt: String,
    /// LoRA rank.
    pub rank: usize,
    /// None: alpha = rank (scale 1).
    pub alpha: Option<f64>,
    /// Optimiser updates.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Images per micro-batch.
    pub batch: usize,
    /// Micro-batches per update.
    pub grad_accum: usize,
    /// Linear warmup updates (0: constant rate).
    pub warmup: usize,
    /// Training image side; None: the model's native resolution.
    pub size: Option<usize>,
    /// Seed of the LoRA init, data order and noise.
    pub seed: u64,
    /// Checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: usize,
    /// Output folder: the LoRA file, checkpoints, log.
    pub out: PathBuf,
    /// Checkpoint folder to resume from.
    pub resume: Option<PathBuf>,
    /// After training, sample this many images with and without the LoRA (same noise) and
    /// measure how close each is to its nearest training image in latent space (0: skip).
    pub eval_samples: usize,
}

/// Before/after comparison written by `eval_samples`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoraEffect {
    /// Number of samples compared.
    pub samples: usize,
    /// Mean over samples of the RMS distance to the nearest training latent, without the LoRA.
    pub nearest_rms_without: f64,
    /// The same with the LoRA installed.
    pub nearest_rms_with: f64,
    /// PNG grid: first row without LoRA, second row with, third row training images.
    pub grid: PathBuf,
}

/// What a LoRA training run produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoraTrainReport {
    /// The trained LoRA ([`LORA_FILE`] in the output folder).
    pub lora_file: PathBuf,
    /// Training images.
    pub images: usize,
    /// Training image side in pixels.
    pub size: usize,
    /// LoRA parameters trained.
    pub trainable_parameters: usize,
    /// Loss of the first update run.
    pub first_loss: f64,
    /// Loss of the last update run.
    pub last_loss: f64,
    /// Figures of every update run.
    pub steps: Vec<StepStats>,
    /// The before/after comparison, with `eval_samples`.
    pub effect: Option<LoraEffect>,
}

/// Encodes every training image once (posterior mean × scaling factor): the VAE is frozen, and on
/// CPU re-encoding each step would cost more than the UNet step itself.
pub fn encode_images(
    sd: &StableDiffusion,
    data: &ImageFolder,
    dev: &Device,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(data.len());
    for i in 0..data.len() {
        let x = data.tensor(i, dev)?;
        out.push(sd.encode_mean(&x)?.squeeze(0)?);
    }
    Ok(out)
}

/// Trains a fresh (or resumed) rank-`rank` LoRA on the UNet attention projections and writes it to
/// `out/pytorch_lora_weights.safetensors`. Checkpoints and `train_log.jsonl` go to `out/`.
pub fn lora_finetune(
    sd: &StableDiffusion,
    o: &LoraTrainOptions,
    progress: impl FnMut(&StepStats) + 'static,
) -> Result<LoraTrainReport> {
    let dev = sd.device.clone();
    let size = o.size.unwrap_or_else(|| sd.native_size());
    if size == 0 || !size.is_multiple_of(sd.vae_scale_factor()) {
        return Err(Error::invalid(format!(
            "training size {size} must be a positive multiple of {}",
            sd.vae_scale_factor()
        )));
    }
    if sd.unet.in_channels() != sd.sample_channels() {
        return Err(Error::invalid(
            "lora-train fine-tunes text-to-image UNets; this model's UNet takes extra input channels (inpainting)",
        ));
    }
    let data = ImageFolder::open(&o.data, size)?;
    let latents = encode_images(sd, &data, &dev)?;
    let text = sd.encode_text(&[&o.prompt])?;

    let lcfg = LoraConfig {
        alpha: o.alpha,
        seed: o.seed,
        ..LoraConfig::unet(o.rank)
    };
    let lora = Lora::attach_unet(&sd.unet, &lcfg)?;
    lora.set_training(true);
    let vars = lora.vars();
    let trainable_parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let cfg = TrainConfig {
        steps: o.steps,
        batch_size: o.batch,
        grad_accum: o.grad_accum,
        seed: o.seed,
        optimizer: AdamWConfig {
            lr: o.lr,
            ..AdamWConfig::default()
        },
        lr_schedule: if o.warmup > 0 {
            LrSchedule::LinearWarmup { warmup: o.warmup }
        } else {
            LrSchedule::Constant
        },
        max_grad_norm: Some(1.0),
        checkpoint_every: o.checkpoint_every,
        keep_checkpoints: 2,
        out_dir: Some(o.out.clone()),
    };
    let mut trainer = Trainer::new(cfg, vars, latents.len())?.with_metadata(serde_json::json!({
        "job": "lora-train", "prompt": o.prompt, "rank": o.rank, "alpha": o.alpha,
        "data": o.data, "size": size,
    }));
    if let Some(dir) = &o.resume {
        trainer.resume(dir)?;
    }
    trainer.on_progress(progress);
    let loss = DiffusionLoss::new(&sd.scheduler_config)?;
    let ctx = ForwardCtx::default();
    let steps = trainer.run(|batch| {
        let x0 = Tensor::stack(
            &batch
                .indices
                .iter()
                .map(|&i| &latents[i])
                .collect::<Vec<_>>(),
            0,
        )?;
        let (noise, t) = loss.draw(&x0, &mut batch.rng())?;
        let txt = text.repeat((x0.dim(0)?, 1, 1))?;
        loss.loss(&sd.unet, &x0, &txt, &noise, &t, &ctx)
    })?;
    lora.set_training(false);
    let lora_file = o.out.join(LORA_FILE);
    lora.save(&lora_file, 0)?;
    let effect = if o.eval_samples > 0 {
        lora.remove_unet(&sd.unet);
        let without = sample_latents(sd, &o.prompt, o.eval_samples, size, o.seed)?;
        lora.install_unet(&sd.unet);
        let with = sample_latents(sd, &o.prompt, o.eval_samples, size, o.seed)?;
        let grid = o.out.join("samples_without_with_lora.png");
        write_grid(
            sd,
            &[
                &without,
                &with,
                &latents[..latents.len().min(o.eval_samples)],
            ],
            &grid,
        )?;
        Some(LoraEffect {
            samples: o.eval_samples,
            nearest_rms_without: mean_nearest_rms(&without, &latents)?,
            nearest_rms_with: mean_nearest_rms(&with, &latents)?,
            grid,
        })
    } else {
        None
    };
    Ok(LoraTrainReport {
        lora_file,
        images: latents.len(),
        size,
        trainable_parameters,
        first_loss: steps.first().map_or(f64::NAN, |s| s.loss),
        last_loss: steps.last().map_or(f64::NAN, |s| s.loss),
        steps,
        effect,
    })
}

/// `n` txt2img latents (DDIM, 25 steps, guidance 5), sample `i` seeded with `seed + i`.
fn sample_latents(
    sd: &StableDiffusion,
    prompt: &str,
    n: usize,
    size: usize,
    seed: u64,
) -> Result<Vec<Tensor>> {
    let opts = crate::sd::pipeline::SampleOptions {
        prompt: prompt.into(),
        steps: 25,
        guidance: 5.0,
        width: Some(size),
        height: Some(size),
        scheduler: Some(crate::sd::scheduler::SchedulerKind::Ddim),
        ..Default::default()
    };
    (0..n as u64)
        .map(|i| {
            let mut noise = crate::sd::noise::SeededNoise::new(seed.wrapping_add(i));
            Ok(sd.txt2img(&opts, &mut noise, &mut |_, _| {})?.squeeze(0)?)
        })
        .collect()
}

/// Mean over `samples` of the RMS distance to the closest of `train`.
pub fn mean_nearest_rms(samples: &[Tensor], train: &[Tensor]) -> Result<f64> {
    let mut total = 0.0;
    for s in samples {
        let mut best = f64::INFINITY;
        for t in train {
            let d = (s - t)?
                .sqr()?
                .mean_all()?
                .to_dtype(candle_core::DType::F64)?;
            best = best.min(d.to_scalar::<f64>()?.sqrt());
        }
        total += best;
    }
    Ok(total / samples.len().max(1) as f64)
}

/// Decodes rows of latents and writes them as one PNG grid (rows top to bottom).
fn write_grid(sd: &StableDiffusion, rows: &[&[Tensor]], path: &std::path::Path) -> Result<()> {
    let mut images: Vec<Vec<image::RgbImage>> = Vec::new();
    for row in rows {
        let mut r = Vec::new();
        for z in row.iter() {
            r.extend(crate::io::image_tensor::tensor_to_rgb(
                &sd.decode(&z.unsqueeze(0)?)?,
            )?);
        }
        images.push(r);
    }
    let cols = images.iter().map(Vec::len).max().unwrap_or(1);
    let rows: Vec<&[image::RgbImage]> = images.iter().map(Vec::as_slice).collect();
    crate::io::image::save_png_grid(&rows, cols, path)
}

/// Mean of the last `n` losses (a smoother figure than the last step's loss).
pub fn tail_mean(steps: &[StepStats], n: usize) -> f64 {
    let tail = &steps[steps.len().saturating_sub(n)..];
    tail.iter().map(|s| s.loss).sum::<f64>() / tail.len().max(1) as f64
}
