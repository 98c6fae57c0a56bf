//! Pretraining from scratch: every weight of a pixel-space preset's UNet and text encoder is
//! trained on the defect-free `train/good` images of one MVTec-layout category, all paired with
//! the prompt `"a photo of a <category>"`. The job behind `anodiff pretrain` and `anodiff demo`.
//! Writes a diffusers-style model folder without `vae/` (`StableDiffusion::save`) that
//! `StableDiffusion::load` reads back; the held-out loss and the sample grid are measured by
//! `pretrain_eval.rs`.

use super::diffusion::DiffusionLoss;
use super::pretrain_eval::{held_out_loss, sample_images};
use super::trainer::{StepStats, TrainConfig, Trainer};
use crate::data::augment::{AugmentOptions, Augmenter};
use crate::data::mvtec::{MvtecDataset, OnBadFile};
use crate::error::{Error, Result};
use crate::io::image_tensor::rgb_to_tensor;
use crate::io::json::write_json;
use crate::sd::attention::ForwardCtx;
use crate::sd::model_params::ModelParams;
use crate::sd::pipeline::StableDiffusion;
use crate::sd::pixel_norm::PixelNorm;
use crate::sd::presets::Preset;
use crate::sd::scheduler::SchedulerKind;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// What `anodiff pretrain` (and `anodiff demo`) trains.
#[derive(Clone, Debug)]
pub struct PretrainOptions {
    /// One MVTec-layout category folder (with `train/good`, optionally `test/good`).
    pub dataset: PathBuf,
    /// A pixel-space preset name (`small`, `small64`, `tiny-pixel`).
    pub preset: String,
    /// Output folder: the model folder, checkpoints, log, grid.
    pub out: PathBuf,
    /// Optimiser updates.
    pub steps: usize,
    /// Images per update.
    pub batch: usize,
    /// The batch is computed as this many equal micro-batches, side by side on the cores
    /// ([`Trainer::run_with_par`]; 1: one batch). Results depend on this number (each
    /// micro-batch draws its own noise) but not on the thread count.
    pub micro_batches: usize,
    /// Peak learning rate (linear warmup, then cosine to 0).
    pub lr: f64,
    /// Warmup updates.
    pub warmup: usize,
    /// Seed of the weights, data order and noise.
    pub seed: u64,
    /// Checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoint folder to resume from.
    pub resume: Option<PathBuf>,
    /// Images sampled after training for the grid (0: no grid).
    pub samples: usize,
    /// DDIM steps per sample.
    pub sample_steps: usize,
    /// Standardise pixels per channel with the training set's statistics (see `PixelNorm`).
    pub pixel_norm: bool,
    /// Probability that an image is trained with the empty prompt, so the model also learns the
    /// unconditional mode classifier-free guidance needs (SD trains with 0.1).
    pub prompt_dropout: f64,
    /// Probability that an image is replaced by a random region of itself on the mid-grey canvas
    /// ([`crate::data::canvas`]), trained with the empty prompt: the form of DualAnoDiff's part
    /// images, which a base that saw only whole images predicts badly.
    pub canvas: f64,
    /// Train on random preset-size windows of the images scaled by this factor (1 = native
    /// resolution; raised where an image would not cover a window) instead of on whole images
    /// squashed to the preset size: small defects keep their pixels (a BSData pit covers a median
    /// 110 pixels at native scale, under one squashed to 64 px), the base for `dual-train
    /// --sampling crop`. Held-out loss and the grid's real images then use centre windows.
    pub tile_scale: Option<f64>,
}

impl Default for PretrainOptions {
    fn default() -> Self {
        Self {
            dataset: PathBuf::new(),
            preset: "small".into(),
            out: PathBuf::from("pretrain-out"),
            steps: 1000,
            batch: 8,
            micro_batches: 1,
            lr: 1e-3,
            warmup: 50,
            seed: 0,
            checkpoint_every: 250,
            resume: None,
            samples: 8,
            sample_steps: 50,
            pixel_norm: true,
            prompt_dropout: 0.1,
            canvas: 0.0,
            tile_scale: None,
        }
    }
}

/// What a pretraining run produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PretrainReport {
    /// The trained model folder (`anodiff txt2img --model` loads it).
    pub model_dir: PathBuf,
    /// Category name (the dataset folder's name).
    pub category: String,
    /// The prompt the model was trained with ([`category_prompt`]).
    pub prompt: String,
    /// `train/good` images used.
    pub train_images: usize,
    /// `test/good` images used for the held-out loss.
    pub test_images: usize,
    /// Image side in pixels.
    pub size: usize,
    /// Scale of the training windows (`None`: whole images squashed to `size`).
    pub tile_scale: Option<f64>,
    /// Parameters trained (UNet + text encoder).
    pub trainable_parameters: usize,
    /// `train_log.jsonl`: one line per update (loss, lr, grad norm, time).
    pub log: PathBuf,
    /// Loss of the first update run.
    pub first_loss: f64,
    /// Mean of the last 20 updates' losses.
    pub last_loss: f64,
    /// (t, mean ε-MSE over `test/good` with fixed noise) for t in
    /// [`HELD_OUT_T`](super::pretrain_eval::HELD_OUT_T); empty without test images.
    pub held_out: Vec<(usize, f64)>,
    /// The same figures for the untrained model (same noise), as the baseline.
    pub held_out_untrained: Vec<(usize, f64)>,
    /// PNG: samples on top, real training images below.
    pub grid: Option<PathBuf>,
    /// Training wall time in seconds.
    pub train_secs: f64,
    /// Sampling wall time in seconds.
    pub sample_secs: f64,
    /// Figures of every update run (not serialised).
    #[serde(skip)]
    pub steps: Vec<StepStats>,
}

/// "a photo of a metal texture" for the category folder `metal_texture`.
pub fn category_prompt(category: &str) -> String {
    format!("a photo of a {}", category.replace(['_', '-'], " "))
}

/// A pixel-space model in `preset`'s shapes with fresh trainable weights, sampling with DDIM by
/// default; returns the model and the parameter stores whose `vars()` are its weights.
pub fn fresh_pixel_model(
    preset: &Preset,
    seed: u64,
    dev: &Device,
) -> Result<(StableDiffusion, ModelParams)> {
    if !preset.pixel_space {
        return Err(Error::invalid(format!(
            "preset `{}` works in a VAE latent space; pretraining from scratch needs a pixel-space preset (small, tiny-pixel)",
            preset.name
        )));
    }
    let (mut sd, params) = StableDiffusion::from_preset_with_params(preset, seed, dev)?;
    sd.default_scheduler = SchedulerKind::Ddim;
    Ok((sd, params))
}

fn load_images(samples: &[crate::data::mvtec::Sample], side: u32) -> Result<Vec<image::RgbImage>> {
    crate::io::image::load_square(samples, side, MvtecDataset::load_image)
}

/// `side`² views of the images as the model sees them: squashed whole, or (with a tile scale)
/// the centre window of the scaled image.
fn load_views(
    samples: &[crate::data::mvtec::Sample],
    side: u32,
    tile_scale: Option<f64>,
) -> Result<Vec<image::RgbImage>> {
    match tile_scale {
        None => load_images(samples, side),
        Some(s) => Ok(
            crate::io::image::load_scaled(samples, s, side, MvtecDataset::load_image)?
                .iter()
                .map(|i| crate::io::image::centre_window(i, side))
                .collect(),
        ),
    }
}

/// Trains `o.preset` from scratch on `o.dataset` and writes `o.out/model`, `train_log.jsonl`,
/// checkpoints, `samples.png` and `report.json`.
pub fn pretrain(
    o: &PretrainOptions,
    progress: impl FnMut(&StepStats) + 'static,
) -> Result<PretrainReport> {
    let dev = Device::Cpu;
    let preset = Preset::by_name(&o.preset)?;
    let size = preset.resolution;
    let (ds, _) = MvtecDataset::open(&o.dataset, OnBadFile::Error)?;
    if ds.train_good.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no train/good images to pretrain on",
            o.dataset.display()
        )));
    }
    let micro_batch = crate::train::micro_batch_size("pretrain", o.batch, o.micro_batches)?;
    if let Some(s) = o.tile_scale {
        if !(s.is_finite() && s > 0.0) {
            return Err(Error::invalid(format!(
                "pretrain: tile scale {s} must be a positive number"
            )));
        }
    }
    let category = crate::data::mvtec::category_name(&o.dataset).unwrap_or_else(|| "object".into());
    let prompt = category_prompt(&category);
    // Whole images: resized once to 1/8 above the training side; tiles: scaled once. Each step
    // takes a random training-size crop and flips.
    let train = match o.tile_scale {
        None => load_images(&ds.train_good, (size + size / 8) as u32)?,
        Some(s) => {
            crate::io::image::load_scaled(&ds.train_good, s, size as u32, MvtecDataset::load_image)?
        }
    };
    let (mut sd, params) = fresh_pixel_model(&preset, o.seed, &dev)?;
    if o.pixel_norm {
        let norm = PixelNorm::from_images(&train)?;
        sd.scheduler_config.clip_sample_range = norm.range_bound();
        sd.pixel_norm = Some(norm);
    }
    // Held-out images in the space the UNet denoises.
    let test: Vec<Tensor> = load_views(&ds.test_good, size as u32, o.tile_scale)?
        .iter()
        .map(|i| sd.encode_mean(&rgb_to_tensor(i, &dev)?))
        .collect::<Result<_>>()?;
    let vars = params.vars();
    let trainable_parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let loss = DiffusionLoss::new(&sd.scheduler_config)?;
    let held_out_untrained = held_out_loss(&sd, &loss, &test, &prompt, o.seed)?;

    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let cfg = TrainConfig {
        batch_size: micro_batch,
        grad_accum: o.micro_batches,
        seed: o.seed,
        checkpoint_every: o.checkpoint_every,
        out_dir: Some(o.out.clone()),
        ..TrainConfig::cosine(o.steps, o.lr, o.warmup)
    };
    let mut trainer = Trainer::new(cfg, vars, train.len())?.with_metadata(json!({
        "job": "pretrain", "preset": preset.name, "prompt": prompt,
        "dataset": o.dataset, "size": size, "tile_scale": o.tile_scale,
    }));
    if let Some(dir) = &o.resume {
        trainer.resume(dir)?;
    }
    trainer.on_progress(progress);
    let ctx = ForwardCtx::default();
    let aug = AugmentOptions {
        resize: None,
        crop: Some((size as u32, size as u32)),
        hflip: 0.5,
        vflip: 0.5,
    };
    let t0 = Instant::now();
    let steps = trainer.run_par(|batch| {
        let mut a = Augmenter::new(aug.clone(), batch.seed);
        let mut xs = Vec::with_capacity(batch.indices.len());
        // Separate streams, so runs without canvases or dropout keep their noise and timesteps.
        let mut canvas_coins =
            rand::rngs::StdRng::seed_from_u64(crate::seed::mix(batch.seed ^ 0xCA1A5));
        let mut on_canvas = Vec::with_capacity(batch.indices.len());
        for &i in &batch.indices {
            let (img, _) = a.apply(&train[i], None)?;
            let x = rgb_to_tensor(&img, &dev)?;
            let canvas = o.canvas > 0.0 && canvas_coins.random_bool(o.canvas.min(1.0));
            xs.push(if canvas {
                let m = crate::data::canvas::blob_mask(size, size, &mut canvas_coins, &dev)?;
                crate::data::canvas::on_canvas(&x, &m)?
            } else {
                x
            });
            on_canvas.push(canvas);
        }
        let x0 = sd.encode_mean(&Tensor::cat(&xs, 0)?)?;
        let (noise, t) = loss.draw(&x0, &mut batch.rng())?;
        // The text encoder is trained too, so its output is recomputed every step.
        let txt = if o.prompt_dropout > 0.0 || o.canvas > 0.0 {
            let mut coins =
                rand::rngs::StdRng::seed_from_u64(crate::seed::mix(batch.seed ^ 0xD20F));
            let both = sd.encode_text(&[&prompt, ""])?;
            let rows: Vec<u32> = on_canvas
                .iter()
                .map(|&c| u32::from(coins.random_bool(o.prompt_dropout.clamp(0.0, 1.0)) || c))
                .collect();
            both.index_select(&Tensor::new(rows.as_slice(), &dev)?, 0)?
        } else {
            sd.encode_text(&[&prompt])?.repeat((x0.dim(0)?, 1, 1))?
        };
        loss.loss(&sd.unet, &x0, &txt, &noise, &t, &ctx)
    })?;
    let train_secs = t0.elapsed().as_secs_f64();

    let model_dir = o.out.join("model");
    sd.save(&model_dir, &params)?;
    let held_out = held_out_loss(&sd, &loss, &test, &prompt, o.seed)?;
    let t1 = Instant::now();
    let grid = if o.samples > 0 {
        let samples = sample_images(&sd, &prompt, o.samples, size, o.sample_steps, o.seed)?;
        // Evenly spaced over the sorted list: the first files are often one capture run (MTD's
        // first 126 are its darkest), which made good samples look wrongly bright beside them.
        let picks = crate::data::subsample::evenly_spaced(&ds.train_good, o.samples);
        let real = load_views(&picks, size as u32, o.tile_scale)?;
        let path = o.out.join("samples.png");
        crate::io::image::save_png_grid(&[&samples, &real], 8, &path)?;
        Some(path)
    } else {
        None
    };
    let tail = &steps[steps.len().saturating_sub(20)..];
    let report = PretrainReport {
        model_dir,
        category,
        prompt,
        train_images: train.len(),
        test_images: test.len(),
        size,
        tile_scale: o.tile_scale,
        trainable_parameters,
        log: o.out.join("train_log.jsonl"),
        first_loss: steps.first().map_or(f64::NAN, |s| s.loss),
        last_loss: tail.iter().map(|s| s.loss).sum::<f64>() / tail.len().max(1) as f64,
        held_out,
        held_out_untrained,
        grid,
        train_secs,
        sample_secs: t1.elapsed().as_secs_f64(),
        steps,
    };
    write_json(&o.out.join("report.json"), &report)?;
    Ok(report)
}
