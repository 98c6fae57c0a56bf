//! The `dual-train` job: base model + few-shot training pairs → a DualAnoDiff run folder.
//!
//! ```text
//! RUN/dual_run.json                    what was trained on what (base model, data, geometry, settings)
//! RUN/dual_config.json                 the model settings        ┐
//! RUN/pytorch_lora_weights.safetensors UNet set 0 + text encoder  │ DualModel::save / load
//! RUN/pytorch_lora_weights_part.safetensors  UNet set 1           │
//! RUN/dual_modules.safetensors         SAIM / BCM                ┘
//! RUN/checkpoints/step-N/, LATEST      exact-resume checkpoints (Trainer)
//! RUN/train_log.jsonl                  one line per update
//! RUN/samples/step-N.png               whole | part | mask grids during training
//! ```
//! The final weights are the last step's: no checkpoint is ever chosen by looking at test data.

use super::config::DualConfig;
use super::mask::{real_part_contrast, DistanceMask, DistanceMaskOptions, MaskExtractor};
use super::model::DualModel;
use super::pairs::{PairOptions, PairSampler, PairSet};
use super::sample::{sample_pairs, Backbone, PairText, References, SampleSettings};
use super::train::{run_dual_training, LossSettings};
use crate::data::foreground::ForegroundSpec;
use crate::data::mask_ops::area_fraction;
use crate::data::split::SplitManifest;
use crate::error::{Error, Result};
use crate::io::image_tensor::tensor_to_rgb;
use crate::io::json::{read_json, write_json};
use crate::sd::model_source::ModelSource;
use crate::sd::noise::{NoiseSource, SeededNoise};
use crate::sd::pipeline::StableDiffusion;
use crate::sd::scheduler::SchedulerKind;
use crate::seed::mix;
use crate::train::optim::AdamWConfig;
use crate::train::schedule::LrSchedule;
use crate::train::trainer::{StepStats, TrainConfig, Trainer};
use candle_core::{Device, Tensor};
use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File name of the run description.
pub const RUN_FILE: &str = "dual_run.json";

/// Where the training defects come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairData {
    /// The training defects of `defect` in a few-shot split manifest (`anodiff split`).
    Split {
        /// The manifest file.
        manifest: PathBuf,
        /// The defect type.
        defect: String,
    },
    /// A user's own photos: images and masks matched by file stem.
    Folders {
        /// Defect images.
        images: PathBuf,
        /// Their masks (`<stem>.png` or `<stem>_mask.png`).
        masks: PathBuf,
    },
}

/// Everything `dual-train` needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DualTrainOptions {
    /// The base model.
    pub model: ModelSource,
    /// The training defects.
    pub data: PairData,
    /// Defect-free images for BCM's references at generation time (`train/good` of the split
    /// when `None` and the data is a split).
    pub good: Option<PathBuf>,
    /// How the object (foreground) masks for BCM's background images are obtained.
    pub foreground: String,
    /// Sample geometry and flips.
    pub pairs: PairOptions,
    /// Model settings.
    pub config: DualConfig,
    /// Optimiser updates (paper: 5000).
    pub steps: usize,
    /// Pairs per update (paper: 4).
    pub batch: usize,
    /// Each update's pairs as this many equal micro-batches, computed side by side on the cores
    /// (1: all at once). Results depend on this number, never on the thread count.
    #[serde(default = "one")]
    pub micro_batches: usize,
    /// AdamW learning rate, constant (paper: 2e-5).
    pub lr: f64,
    /// Probability that a pair trains the unconditional mode (empty prompts, zero reference);
    /// paper: 0 (SD-1.5 has one already), small models pretrained here: 0.1.
    #[serde(default)]
    pub prompt_dropout: f64,
    /// Extra weight of defect pixels in the whole-image loss, `1 + w·M` (paper: 0; see
    /// [`DualLoss::with_mask_weight`](super::train::DualLoss::with_mask_weight)).
    #[serde(default)]
    pub mask_weight: f64,
    /// Guidance scale of the sample grids.
    #[serde(default = "two")]
    pub sample_guidance: f64,
    /// Linear warm-up updates (0: none).
    pub warmup: usize,
    /// AdamW weight decay (paper: 1e-2).
    pub weight_decay: f64,
    /// Global gradient-norm clip (paper: 1.0).
    pub max_grad_norm: f64,
    /// Checkpoint every N updates (paper: 1000; 0: only at the end).
    pub checkpoint_every: usize,
    /// A sample grid every N updates (0: only at the end).
    pub sample_every: usize,
    /// Pairs in each sample grid.
    pub sample_count: usize,
    /// Denoising steps of the grid samples (DDIM).
    pub sample_steps: usize,
    /// Seeds data order, noise and fresh weights.
    pub seed: u64,
    /// The run folder.
    pub out: PathBuf,
}

impl DualTrainOptions {
    /// The paper's training settings (METHODS.md A.3) for `model` and `data`.
    pub fn paper(model: ModelSource, data: PairData, out: PathBuf) -> Self {
        Self {
            model,
            data,
            good: None,
            foreground: "classical".into(),
            pairs: PairOptions::default(),
            config: DualConfig::default(),
            steps: 5000,
            batch: 4,
            micro_batches: 1,
            lr: 2e-5,
            prompt_dropout: 0.0,
            mask_weight: 0.0,
            sample_guidance: 2.0,
            warmup: 0,
            weight_decay: 1e-2,
            max_grad_norm: 1.0,
            checkpoint_every: 1000,
            sample_every: 1000,
            sample_count: 4,
            sample_steps: 25,
            seed: 0,
            out,
        }
    }

    /// The `train/good` folder (or `--good`) used for references at generation time.
    pub fn good_dir(&self) -> Result<Option<PathBuf>> {
        if let Some(g) = &self.good {
            return Ok(Some(g.clone()));
        }
        match &self.data {
            PairData::Split { manifest, .. } => {
                let m = SplitManifest::load(manifest)?;
                Ok(Some(m.dataset.join("train").join("good")))
            }
            PairData::Folders { .. } => Ok(None),
        }
    }
}

fn one() -> usize {
    1
}

fn two() -> f64 {
    2.0
}

/// What a finished (or resumed and finished) training run reports.
#[derive(Clone, Debug, Serialize)]
pub struct DualTrainReport {
    /// Training pairs used (after dropping empty masks).
    pub pairs: usize,
    /// Sample side in pixels.
    pub size: u32,
    /// Trainable parameters (LoRA sets, SAIM, BCM).
    pub trainable_parameters: usize,
    /// Loss of the first update run by this call.
    pub first_loss: f64,
    /// Mean loss over the last 20 updates.
    pub last_loss: f64,
    /// Wall time of the training loop.
    pub train_secs: f64,
    /// Sample grids written.
    pub grids: Vec<PathBuf>,
    /// Figures per update.
    #[serde(skip)]
    pub steps: Vec<StepStats>,
}

/// Loads the base model of a run description.
pub fn load_base(o: &DualTrainOptions, device: &Device) -> Result<StableDiffusion> {
    o.model.load(device)
}

/// Opens the training pairs (clear errors for bad input; empty masks skipped with a warning).
pub fn open_pairs(o: &DualTrainOptions) -> Result<(PairSet, PairSampler)> {
    let fg = ForegroundSpec::parse(&o.foreground)?.build()?;
    let (set, report) = match &o.data {
        PairData::Split { manifest, defect } => {
            PairSet::from_split(&SplitManifest::load(manifest)?, defect, fg.as_ref())?
        }
        PairData::Folders { images, masks } => PairSet::from_folders(images, masks, fg.as_ref())?,
    };
    tracing::info!(
        "{} training pairs ({} empty masks skipped; foreground: {})",
        report.loaded,
        report.empty_masks.len(),
        report.foreground
    );
    let sampler = PairSampler::new(&set, o.pairs)?;
    Ok((set, sampler))
}

/// Trains (or resumes with `resume`) and writes the run folder; `progress` sees every update.
pub fn dual_train(
    o: &DualTrainOptions,
    resume: Option<&Path>,
    progress: impl FnMut(&StepStats) + 'static,
) -> Result<DualTrainReport> {
    let dev = Device::Cpu;
    let micro_batch = crate::train::micro_batch_size("dual-train", o.batch, o.micro_batches)?;
    let sd = load_base(o, &dev)?;
    let size = o.pairs.sampling.size() as usize;
    let f = sd.vae_scale_factor();
    if size == 0 || !size.is_multiple_of(f) {
        return Err(Error::invalid(format!(
            "sample size {size} must be a positive multiple of the model's VAE factor {f}"
        )));
    }
    let (_, sampler) = open_pairs(o)?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let model = DualModel::fresh(
        &sd.unet,
        &sd.text_encoder,
        &DualConfig {
            seed: mix(o.seed ^ 0xD0A1),
            ..o.config.clone()
        },
        &dev,
    )?;
    model.install(&sd.unet, &sd.text_encoder);
    let vars = model.vars();
    let trainable_parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let cfg = TrainConfig {
        steps: o.steps,
        batch_size: micro_batch,
        grad_accum: o.micro_batches,
        seed: o.seed,
        optimizer: AdamWConfig {
            lr: o.lr,
            weight_decay: o.weight_decay,
            ..AdamWConfig::default()
        },
        lr_schedule: if o.warmup > 0 {
            LrSchedule::LinearWarmup { warmup: o.warmup }
        } else {
            LrSchedule::Constant
        },
        max_grad_norm: Some(o.max_grad_norm),
        checkpoint_every: o.checkpoint_every,
        keep_checkpoints: 2,
        out_dir: Some(o.out.clone()),
    };
    let meta = serde_json::to_value(o).map_err(|e| Error::invalid(e.to_string()))?;
    let mut trainer = Trainer::new(cfg, vars, sampler.len())?.with_metadata(meta);
    if let Some(dir) = resume {
        trainer.resume(dir)?;
    }
    trainer.on_progress(progress);
    // The description first, so a run folder always says what it is, even mid-training.
    write_json(&o.out.join(RUN_FILE), o)?;
    let grids_dir = o.out.join("samples");
    let mut grids = Vec::new();
    let t0 = Instant::now();
    let steps = run_dual_training(
        &sd,
        &model,
        &sampler,
        &mut trainer,
        LossSettings {
            prompt_dropout: o.prompt_dropout,
            mask_weight: o.mask_weight,
        },
        |step| {
            let due = o.sample_every > 0 && step.is_multiple_of(o.sample_every);
            if due || step == o.steps {
                let path = grids_dir.join(format!("step-{step:06}.png"));
                sample_grid(&sd, &model, &sampler, o, &path)?;
                grids.push(path);
            }
            Ok(())
        },
    )?;
    let train_secs = t0.elapsed().as_secs_f64();
    model.save(&o.out)?;
    let tail = &steps[steps.len().saturating_sub(20)..];
    Ok(DualTrainReport {
        pairs: sampler.len(),
        size: size as u32,
        trainable_parameters,
        first_loss: steps.first().map_or(f64::NAN, |s| s.loss),
        last_loss: tail.iter().map(|s| s.loss).sum::<f64>() / tail.len().max(1) as f64,
        train_secs,
        grids,
        steps,
    })
}

/// Reads a run folder's description.
pub fn read_run(dir: &Path) -> Result<DualTrainOptions> {
    read_json(&dir.join(RUN_FILE))
}

/// A grid of `o.sample_count` generated pairs (rows: whole | part | mask, then the real training
/// pairs below), sampled with DDIM and guidance 2 from fixed seeds so grids of different steps
/// compare; BCM references are the training pairs' backgrounds.
fn sample_grid(
    sd: &StableDiffusion,
    model: &DualModel,
    sampler: &PairSampler,
    o: &DualTrainOptions,
    path: &Path,
) -> Result<()> {
    let n = o.sample_count.max(1);
    let idx: Vec<usize> = (0..n).map(|i| i % sampler.len()).collect();
    let real = sampler.batch(&idx, mix(o.seed ^ 0x6121D), &sd.device)?;
    let settings = SampleSettings {
        steps: o.sample_steps,
        guidance: o.sample_guidance,
        scheduler: SchedulerKind::Ddim,
        negative_prompt: String::new(),
    };
    let text = PairText::encode(sd, model, "")?;
    let bg = sd.encode_mean(&real.background)?;
    let zero = zero_reference(sd, o.pairs.sampling.size() as usize)?;
    let mut streams: Vec<Box<dyn NoiseSource>> = (0..n)
        .map(|i| Box::new(SeededNoise::new(mix(o.seed ^ (i as u64 + 1)))) as Box<dyn NoiseSource>)
        .collect();
    let c = sd.sample_channels();
    let (h, w) = (bg.dim(2)?, bg.dim(3)?);
    let refs = model.config.bcm.then_some(References {
        backgrounds: &bg,
        zero: &zero,
    });
    let out = sample_pairs(
        &Backbone::of(sd),
        model,
        &text,
        &settings,
        refs,
        None,
        &mut streams,
        (c, h, w),
    )?;
    let images = tensor_to_rgb(&sd.decode(&out)?)?;
    let extractor = DistanceMask::new(DistanceMaskOptions::default());
    let mut gen_rows: Vec<RgbImage> = Vec::new();
    for pair in images.chunks(2) {
        let mask = extractor.extract(&pair[1])?;
        gen_rows.extend([pair[0].clone(), pair[1].clone(), grey_to_rgb(&mask)]);
    }
    let mut real_rows: Vec<RgbImage> = Vec::new();
    let whole = tensor_to_rgb(&real.whole)?;
    let part = tensor_to_rgb(&real.part)?;
    let mask = tensor_to_rgb(&((real.mask.repeat((1, 3, 1, 1))? * 2.0)? - 1.0)?)?;
    for i in 0..n {
        real_rows.extend([whole[i].clone(), part[i].clone(), mask[i].clone()]);
    }
    crate::io::image::save_png_grid(&[&gen_rows, &real_rows], 3, path)
}

/// A mask as an RGB image (white defect on black).
pub fn grey_to_rgb(m: &GrayImage) -> RgbImage {
    RgbImage::from_fn(m.width(), m.height(), |x, y| {
        let v = m.get_pixel(x, y)[0];
        image::Rgb([v, v, v])
    })
}

/// A real training defect as generation's checks see it, at the training geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingDefect {
    /// Mask area, fraction of the image.
    pub area: f64,
    /// Contrast of its part image `I ⊙ M` as `extractor` sees it ([`real_part_contrast`];
    /// `None` when the mask is empty here).
    pub contrast: Option<f32>,
}

/// The training defects at the training geometry (for generation's rejection ranges): each
/// example drawn once with a fixed seed.
pub fn training_defects(
    sampler: &PairSampler,
    seed: u64,
    extractor: &DistanceMask,
) -> Result<Vec<TrainingDefect>> {
    (0..sampler.len())
        .map(|i| {
            let d = sampler.draw(i, mix(seed ^ i as u64))?;
            Ok(TrainingDefect {
                area: area_fraction(&d.mask),
                contrast: real_part_contrast(&d.image, &d.mask, extractor)?,
            })
        })
        .collect()
}

/// The latent of the all-zero (mid-grey) image of side `size`, BCM's unconditional reference.
pub fn zero_reference(sd: &StableDiffusion, size: usize) -> Result<Tensor> {
    let z = Tensor::zeros((1, 3, size, size), candle_core::DType::F32, &sd.device)?;
    sd.encode_mean(&z)
}
