//! `detect-train` (METHODS.md B.1 + B.3): ONE inpainting model fine-tuned (or, for the CPU-scale
//! presets, trained from scratch) on the normal images of every given category, with the
//! noise-prediction loss on the inpainting input `[x_t; m; E((1 − m) ⊙ x)]` (diffusers' channel
//! order), random masks placed on the object's foreground ([`super::masks`]) and each image's
//! hierarchical prompt ([`super::prompts`]). Full fine-tuning (every UNet and text-encoder weight)
//! or LoRA on the UNet attention projections (`lora_rank`); the Trainer gives resume, NaN stop,
//! the JSONL log and checkpoints. The run folder is read back by [`super::run::DetectRun`].
//! Optionally (`vae_steps`, full runs of a latent-space model) the VAE decoder is fine-tuned
//! afterwards ([`super::vae_tune`]) and saved with the model in `model/vae/`.

use super::masks::{sample_train_mask, TrainMaskOptions};
use super::prompts::{PromptBook, PromptLevels};
use super::run::{DetectRunConfig, RUN_CONFIG};
use super::vae_tune::{vae_tune, Perceptual, VaeTuneOptions, VaeTuneReport};
use crate::data::augment::{AugmentOptions, Augmenter};
use crate::data::foreground::ForegroundSpec;
use crate::data::mvtec::{category_name, MvtecDataset, OnBadFile};
use crate::error::{Error, Result};
use crate::io::image_tensor::rgb_to_tensor;
use crate::io::json::write_json;
use crate::sd::attention::ForwardCtx;
use crate::sd::lora::{Lora, LoraConfig};
use crate::sd::pipeline::StableDiffusion;
use crate::sd::pixel_norm::PixelNorm;
use crate::sd::presets::Preset;
use crate::sd::scheduler::SchedulerKind;
use crate::train::diffusion::DiffusionLoss;
use crate::train::trainer::{StepStats, TrainConfig, Trainer};
use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// LoRA file of a LoRA run (diffusers' default name).
pub const LORA_FILE: &str = "pytorch_lora_weights.safetensors";

/// Sub-folder of the run with the VAE decoder tuning's checkpoints, log and report.
pub const VAE_TUNE_DIR: &str = "vae_tune";

/// Where the model to train comes from.
#[derive(Clone, Debug)]
pub enum BaseModel {
    /// A pixel-space inpainting preset (`small-inpaint`, `small64-inpaint`), trained from scratch.
    Preset(String),
    /// A diffusers inpainting model folder (e.g. SD-1.5-inpainting), fine-tuned.
    Folder(PathBuf),
}

/// What `anodiff detect-train` trains.
#[derive(Clone, Debug)]
pub struct DetectTrainOptions {
    /// MVTec-layout category folders; their `train/good` images are the training set.
    pub datasets: Vec<PathBuf>,
    /// The model to start from.
    pub base: BaseModel,
    /// Run folder.
    pub out: PathBuf,
    /// Optimiser updates.
    pub steps: usize,
    /// Images per update.
    pub batch: usize,
    /// Each update's images as this many equal micro-batches, computed side by side on the cores
    /// (1: all at once). Results depend on this number, never on the thread count.
    pub micro_batches: usize,
    /// Peak learning rate (warmup, then cosine to 0).
    pub lr: f64,
    /// Warmup updates.
    pub warmup: usize,
    /// `Some(r)`: train a rank-`r` LoRA on the UNet's attention projections (base frozen);
    /// `None`: train every UNet and text-encoder weight.
    pub lora_rank: Option<usize>,
    /// Seed of fresh weights, data order, masks and noise.
    pub seed: u64,
    /// Checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoint (or run) folder to resume from.
    pub resume: Option<PathBuf>,
    /// Training side in pixels; `None`: the model's native size.
    pub size: Option<usize>,
    /// Prompt templates and words.
    pub prompts: PromptBook,
    /// Which prompt levels to use (the same at inference).
    pub levels: PromptLevels,
    /// Probability that an image is trained with the empty prompt.
    pub prompt_dropout: f64,
    /// Training masks.
    pub masks: TrainMaskOptions,
    /// Foreground masks that place the training masks.
    pub foreground: ForegroundSpec,
    /// Inpaint this many training images into `samples.png` after training (0: none).
    pub samples: usize,
    /// VAE decoder fine-tuning updates after the UNet training (0: off). Full runs of a
    /// latent-space model only: a LoRA run with `vae_steps > 0` is refused (its run folder has no
    /// place for a tuned decoder), a pixel-space model has no VAE and skips it with a log line.
    pub vae_steps: usize,
    /// Images per decoder update.
    pub vae_batch: usize,
    /// Peak learning rate of the decoder (warmup of `min(warmup, vae_steps / 10)`, then cosine).
    pub vae_lr: f64,
    /// β of the decoder loss `MSE + β·term` (0 by default: the paper's β is unpublished).
    pub vae_beta: f64,
    /// The β-weighted term (none by default; `gradient` is weight-free, see [`super::vae_tune`]).
    pub vae_perceptual: Perceptual,
    /// LPIPS weights for `vae_perceptual = lpips`.
    pub vae_lpips_weights: Option<PathBuf>,
}

impl Default for DetectTrainOptions {
    fn default() -> Self {
        Self {
            datasets: Vec::new(),
            base: BaseModel::Preset("small64-inpaint".into()),
            out: PathBuf::from("detect-run"),
            steps: 3000,
            batch: 8,
            micro_batches: 1,
            lr: 1e-3,
            warmup: 50,
            lora_rank: None,
            seed: 0,
            checkpoint_every: 500,
            resume: None,
            size: None,
            prompts: PromptBook::default(),
            levels: PromptLevels::Both,
            prompt_dropout: 0.1,
            masks: TrainMaskOptions::default(),
            foreground: ForegroundSpec::Classical,
            samples: 8,
            vae_steps: 0,
            vae_batch: 2,
            vae_lr: 1e-5,
            vae_beta: 0.0,
            vae_perceptual: Perceptual::None,
            vae_lpips_weights: None,
        }
    }
}

impl DetectTrainOptions {
    /// The decoder tuning's settings (resume is decided when it starts).
    pub fn vae_options(&self) -> VaeTuneOptions {
        VaeTuneOptions {
            steps: self.vae_steps,
            batch: self.vae_batch,
            lr: self.vae_lr,
            warmup: self.warmup.min(self.vae_steps / 10),
            beta: self.vae_beta,
            perceptual: self.vae_perceptual,
            lpips_weights: self.vae_lpips_weights.clone(),
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            resume: None,
        }
    }
}

/// What a `detect-train` run produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DetectTrainReport {
    /// The run folder.
    pub run: PathBuf,
    /// Images per category, in the order given.
    pub images: Vec<(String, usize)>,
    /// Training side in pixels.
    pub size: usize,
    /// Parameters trained.
    pub trainable_parameters: usize,
    /// Loss of the first update run.
    pub first_loss: f64,
    /// Mean loss of the last 20 updates.
    pub last_loss: f64,
    /// Training wall time in seconds.
    pub train_secs: f64,
    /// PNG: input | mask | inpainting of some training images.
    pub samples: Option<PathBuf>,
    /// The VAE decoder tuning, when it ran.
    pub vae: Option<VaeTuneReport>,
    /// Figures of every update (not serialised).
    #[serde(skip)]
    pub steps: Vec<StepStats>,
}

/// One training image with its foreground and category index.
#[derive(Clone)]
struct Item {
    image: RgbImage,
    foreground: GrayImage,
    category: usize,
}

/// Trains the model and writes the run folder: `model/` (full) or the LoRA file (LoRA),
/// `detect_config.json`, `train_log.jsonl`, checkpoints, `samples.png`, `report.json` (and
/// [`VAE_TUNE_DIR`] when the decoder is tuned).
pub fn detect_train(
    o: &DetectTrainOptions,
    progress: impl FnMut(&StepStats) + 'static,
) -> Result<DetectTrainReport> {
    detect_train_with(o, progress, |_| {})
}

/// [`detect_train`] with a second progress callback for the VAE decoder tuning's updates.
pub fn detect_train_with(
    o: &DetectTrainOptions,
    progress: impl FnMut(&StepStats) + 'static,
    vae_progress: impl FnMut(&StepStats) + 'static,
) -> Result<DetectTrainReport> {
    let dev = Device::Cpu;
    if o.datasets.is_empty() {
        return Err(Error::invalid("detect-train needs at least one --dataset"));
    }
    let micro_batch = crate::train::micro_batch_size("detect-train", o.batch, o.micro_batches)?;
    // Decoder tuning settings are checked before hours of UNet training, not after.
    if o.vae_steps > 0 {
        if o.lora_rank.is_some() {
            return Err(Error::invalid(
                "--vae-steps is supported for full runs only: a LoRA run keeps the base model \
                 folder and has no place for a tuned VAE decoder (drop --lora-rank or --vae-steps)",
            ));
        }
        o.vae_options().validate()?;
    } else if o.vae_beta != 0.0
        || o.vae_perceptual != Perceptual::None
        || o.vae_lpips_weights.is_some()
    {
        return Err(Error::invalid(
            "--vae-beta / --vae-perceptual / --lpips-weights have no effect without --vae-steps > 0",
        ));
    }
    // 1. The model: fresh preset, or a folder (trainable for full fine-tuning).
    let (mut sd, params, base_name) = match &o.base {
        BaseModel::Preset(name) => {
            let preset = Preset::by_name(name)?;
            if !preset.pixel_space {
                return Err(Error::invalid(format!(
                    "preset `{name}` is not a pixel-space preset; training from scratch needs one (small-inpaint, small64-inpaint), or fine-tune a model folder with --model"
                )));
            }
            let (mut sd, p) = StableDiffusion::from_preset_with_params(&preset, o.seed, &dev)?;
            sd.default_scheduler = SchedulerKind::Ddim;
            (sd, Some(p), format!("preset:{name}"))
        }
        BaseModel::Folder(dir) => {
            if o.lora_rank.is_some() {
                (
                    StableDiffusion::load(dir, &dev)?,
                    None,
                    dir.display().to_string(),
                )
            } else {
                let (sd, p) = StableDiffusion::load_trainable(dir, &dev)?;
                (sd, Some(p), dir.display().to_string())
            }
        }
    };
    let ch = sd.sample_channels();
    if sd.unet.in_channels() != 2 * ch + 1 {
        return Err(Error::invalid(format!(
            "{base_name}: detect-train needs an inpainting UNet ({} input channels), this one has {}",
            2 * ch + 1,
            sd.unet.in_channels()
        )));
    }
    if matches!(o.base, BaseModel::Preset(_)) && o.lora_rank.is_some() {
        return Err(Error::invalid(
            "--lora-rank needs a pretrained --model folder: a preset starts from random weights and is trained in full",
        ));
    }
    let size = o.size.unwrap_or_else(|| sd.native_size());
    let f = sd.vae_scale_factor();
    if size == 0 || !size.is_multiple_of(f) {
        return Err(Error::invalid(format!(
            "training size {size} must be a positive multiple of {f}"
        )));
    }

    // 2. Data: train/good of every category, resized with a margin for random crops, and their
    //    foreground masks (estimated once).
    let estimator = o.foreground.build()?;
    let margin = (size + size / 8) as u32;
    let mut items = Vec::new();
    let mut categories = Vec::new();
    let mut counts = Vec::new();
    for root in &o.datasets {
        let (ds, _) = MvtecDataset::open(root, OnBadFile::Error)?;
        if ds.train_good.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no train/good images",
                root.display()
            )));
        }
        let cat = category_name(root).unwrap_or_else(|| "object".into());
        if !o.prompts.knows(&cat) {
            tracing::warn!(
                "category `{cat}` has no prompt words; it trains with the global prompt"
            );
        }
        let images =
            crate::io::image::load_square(&ds.train_good, margin, MvtecDataset::load_image)?;
        counts.push((cat.clone(), images.len()));
        for (img, s) in images.into_iter().zip(&ds.train_good) {
            let foreground = estimator.estimate(&img, Some(&s.path))?;
            items.push(Item {
                image: img,
                foreground,
                category: categories.len(),
            });
        }
        categories.push(cat);
    }
    // A model trained from scratch standardises pixels with its training set's statistics; a
    // loaded pixel model keeps the ones it was trained with (a LoRA run saves only the LoRA, so
    // inference would otherwise see other statistics than training did).
    if sd.vae.is_none() && matches!(o.base, BaseModel::Preset(_)) {
        let all: Vec<RgbImage> = items.iter().map(|i| i.image.clone()).collect();
        let norm = PixelNorm::from_images(&all)?;
        sd.scheduler_config.clip_sample_range = norm.range_bound();
        sd.pixel_norm = Some(norm);
    }
    let prompts: Vec<String> = categories
        .iter()
        .map(|c| o.prompts.prompt(c, o.levels))
        .collect();

    // 3. What trains.
    let lora = match o.lora_rank {
        Some(r) => {
            let l = Lora::attach_unet(
                &sd.unet,
                &LoraConfig {
                    seed: o.seed,
                    ..LoraConfig::unet(r)
                },
            )?;
            l.set_training(true);
            Some(l)
        }
        None => None,
    };
    let vars = match (&lora, &params) {
        (Some(l), _) => l.vars(),
        (None, Some(p)) => p
            .vars()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("vae."))
            .collect(),
        (None, None) => unreachable!("full training always has trainable params"),
    };
    let train_text = lora.is_none();
    let trainable_parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let cfg = TrainConfig {
        batch_size: micro_batch,
        grad_accum: o.micro_batches,
        seed: o.seed,
        checkpoint_every: o.checkpoint_every,
        out_dir: Some(o.out.clone()),
        ..TrainConfig::cosine(o.steps, o.lr, o.warmup)
    };
    let mut trainer = Trainer::new(cfg, vars, items.len())?.with_metadata(json!({
        "job": "detect-train", "base": base_name, "categories": categories,
        "size": size, "lora_rank": o.lora_rank,
    }));
    if let Some(dir) = &o.resume {
        trainer.resume(dir)?;
    }
    trainer.on_progress(progress);
    let loss = DiffusionLoss::new(&sd.scheduler_config)?;
    let ctx = ForwardCtx::default();
    let aug = AugmentOptions {
        resize: None,
        crop: Some((size as u32, size as u32)),
        hflip: 0.5,
        vflip: 0.5,
    };
    // Frozen text encoder (LoRA runs): the prompts' embeddings once.
    let frozen_text = if train_text {
        None
    } else {
        let mut all: Vec<&str> = prompts.iter().map(String::as_str).collect();
        all.push("");
        Some(sd.encode_text(&all)?)
    };

    // 4. The loop.
    let t0 = Instant::now();
    let steps = trainer.run_par(|batch| {
        let mut a = Augmenter::new(aug.clone(), batch.seed);
        let mut coins = rand::rngs::StdRng::seed_from_u64(crate::seed::mix(batch.seed ^ 0x1A9A1));
        let (mut xs, mut ms, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for &i in &batch.indices {
            let it = &items[i];
            let (img, fg) = a.apply(&it.image, Some(&it.foreground))?;
            let fg = fg.expect("augmenter returns the mask it was given");
            let flags: Vec<bool> = fg.as_raw().iter().map(|&v| v >= 128).collect();
            let m = sample_train_mask(&o.masks, &flags, size, size, &mut coins)?;
            xs.push(rgb_to_tensor(&img, &dev)?);
            ms.push(Tensor::from_vec(m, (1, 1, size, size), &dev)?);
            let dropped = coins.random_bool(o.prompt_dropout.clamp(0.0, 1.0));
            rows.push(if dropped {
                categories.len()
            } else {
                it.category
            } as u32);
        }
        let x = Tensor::cat(&xs, 0)?;
        let m = Tensor::cat(&ms, 0)?;
        let keep = m.lt(0.5)?.to_dtype(DType::F32)?;
        let masked = x.broadcast_mul(&keep)?;
        // Detached: in full runs the VAE's weights are Vars too, but they do not train here.
        let x0 = sd.encode_mean(&x)?.detach();
        let masked_lat = sd.encode_mean(&masked)?.detach();
        let idx = Tensor::arange_step(0u32, size as u32, f as u32, &dev)?;
        let m_lat = m.index_select(&idx, 2)?.index_select(&idx, 3)?;
        let extra = Tensor::cat(&[&m_lat, &masked_lat], 1)?;
        let (noise, t) = loss.draw(&x0, &mut batch.rng())?;
        let text = match &frozen_text {
            Some(e) => e.clone(),
            None => {
                let mut all: Vec<&str> = prompts.iter().map(String::as_str).collect();
                all.push("");
                sd.encode_text(&all)?
            }
        };
        let txt = text.index_select(&Tensor::new(rows.as_slice(), &dev)?, 0)?;
        loss.loss_with_extra(&sd.unet, &x0, &txt, &noise, &t, Some(&extra), &ctx)
    })?;
    let train_secs = t0.elapsed().as_secs_f64();

    // 5. The VAE decoder (full runs of latent-space models), on the images at training size.
    let vae = match (&params, sd.vae.is_some()) {
        _ if o.vae_steps == 0 => None,
        (_, false) => {
            tracing::warn!("--vae-steps skipped: {base_name} is a pixel-space model (no VAE)");
            None
        }
        (None, true) => unreachable!("LoRA runs with --vae-steps are refused above"),
        (Some(p), true) => {
            let vp = p
                .vae
                .as_ref()
                .expect("a latent-space model has a VAE store");
            let images: Vec<RgbImage> = items
                .iter()
                .map(|it| {
                    image::imageops::resize(
                        &it.image,
                        size as u32,
                        size as u32,
                        image::imageops::FilterType::Triangle,
                    )
                })
                .collect();
            let dir = o.out.join(VAE_TUNE_DIR);
            let vo = VaeTuneOptions {
                // A resumed run continues the decoder tuning where it stopped, if it had started.
                resume: o
                    .resume
                    .as_ref()
                    .and_then(|_| crate::train::checkpoint::latest(&dir)),
                ..o.vae_options()
            };
            let r = vae_tune(&sd, vp, &images, &dir, &vo, vae_progress)?;
            tracing::info!(
                "VAE decoder: reconstruction MSE {:.5} -> {:.5} over {} images",
                r.mse_before,
                r.mse_after,
                r.images
            );
            Some(r)
        }
    };

    // 6. The run folder.
    let (model, lora_file) = match (&lora, &params) {
        (Some(l), _) => {
            l.set_training(false);
            let file = o.out.join(LORA_FILE);
            l.save(&file, 0)?;
            let BaseModel::Folder(dir) = &o.base else {
                unreachable!("LoRA runs start from a folder")
            };
            // Absolute, so the run opens from any working directory.
            let base = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
            (base, Some(PathBuf::from(LORA_FILE)))
        }
        (None, Some(p)) => {
            sd.save(&o.out.join("model"), p)?;
            (PathBuf::from("model"), None)
        }
        (None, None) => unreachable!(),
    };
    let run_cfg = DetectRunConfig {
        model,
        lora: lora_file,
        lora_rank: o.lora_rank,
        categories: categories.clone(),
        prompts: o.prompts.clone(),
        levels: o.levels,
        size,
        masks: o.masks.clone(),
        foreground: o.foreground.to_string(),
    };
    write_json(&o.out.join(RUN_CONFIG), &run_cfg)?;
    let samples = if o.samples > 0 {
        Some(write_samples(&sd, &items, &prompts, o, size)?)
    } else {
        None
    };
    let tail = &steps[steps.len().saturating_sub(20)..];
    let report = DetectTrainReport {
        run: o.out.clone(),
        images: counts,
        size,
        trainable_parameters,
        first_loss: steps.first().map_or(f64::NAN, |s| s.loss),
        last_loss: tail.iter().map(|s| s.loss).sum::<f64>() / tail.len().max(1) as f64,
        train_secs,
        samples,
        vae,
        steps,
    };
    write_json(&o.out.join("report.json"), &report)?;
    Ok(report)
}

/// `samples.png`: for evenly spaced training images, rows of input | masked input | inpainting
/// (full strength, a training-style mask), so a person sees whether the model repaints normal
/// content.
fn write_samples(
    sd: &StableDiffusion,
    items: &[Item],
    prompts: &[String],
    o: &DetectTrainOptions,
    size: usize,
) -> Result<PathBuf> {
    let dev = sd.device.clone();
    let picks = crate::data::subsample::evenly_spaced(items, o.samples);
    let mut rng = rand::rngs::StdRng::seed_from_u64(crate::seed::mix(o.seed ^ 0x5A3B));
    let (mut inputs, mut masked, mut outs) = (Vec::new(), Vec::new(), Vec::new());
    for it in picks {
        let img = image::imageops::resize(
            &it.image,
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        );
        let fg = image::imageops::resize(
            &it.foreground,
            size as u32,
            size as u32,
            image::imageops::FilterType::Nearest,
        );
        let flags: Vec<bool> = fg.as_raw().iter().map(|&v| v >= 128).collect();
        let m = sample_train_mask(&o.masks, &flags, size, size, &mut rng)?;
        let m = Tensor::from_vec(m, (1, 1, size, size), &dev)?;
        let x = rgb_to_tensor(&img, &dev)?;
        let so = crate::sd::pipeline::SampleOptions {
            prompt: prompts[it.category].clone(),
            steps: 25,
            guidance: 1.0,
            scheduler: Some(SchedulerKind::Ddim),
            ..Default::default()
        };
        let mut noise = crate::sd::noise::SeededNoise::new(o.seed);
        let lat = sd.inpaint(&so, &x, &m, 1.0, &mut noise, &mut |_, _| {})?;
        let y = sd.decode(&lat)?;
        let keep = m.lt(0.5)?.to_dtype(DType::F32)?;
        inputs.extend(crate::io::image_tensor::tensor_to_rgb(&x)?);
        masked.extend(crate::io::image_tensor::tensor_to_rgb(
            &x.broadcast_mul(&keep)?,
        )?);
        outs.extend(crate::io::image_tensor::tensor_to_rgb(&y)?);
    }
    let path = o.out.join("samples.png");
    let cols = inputs.len().max(1);
    crate::io::image::save_png_grid(&[&inputs, &masked, &outs], cols, &path)?;
    Ok(path)
}

/// Whether `dir` holds a finished detect-train run.
pub fn is_run(dir: &Path) -> bool {
    dir.join(RUN_CONFIG).is_file()
}
