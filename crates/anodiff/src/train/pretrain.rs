//! Pretraining from scratch: every weight of a pixel-space preset's UNet and text encoder is
//! trained on the defect-free `train/good` images of one MVTec-layout category, all paired with
//! the prompt "a photo of a <category>". The job behind `anodiff pretrain` and `anodiff demo`.
//! Writes a diffusers-style model folder without `vae/` that `StableDiffusion::load` reads back.

use super::diffusion::DiffusionLoss;
use super::optim::AdamWConfig;
use super::schedule::LrSchedule;
use super::trainer::{StepStats, TrainConfig, Trainer};
use crate::data::augment::{AugmentOptions, Augmenter};
use crate::data::mvtec::{MvtecDataset, OnBadFile};
use crate::error::{Error, Result};
use crate::io::image_tensor::{rgb_to_tensor, tensor_to_rgb};
use crate::io::json::write_json;
use crate::nn::params::gaussian;
use crate::nn::tensor_files::write_safetensors;
use crate::nn::Params;
use crate::sd::attention::ForwardCtx;
use crate::sd::clip::{ClipActivation, ClipTextConfig, ClipTextModel};
use crate::sd::noise::SeededNoise;
use crate::sd::pipeline::{SampleOptions, StableDiffusion};
use crate::sd::pixel_norm::PixelNorm;
use crate::sd::presets::{fresh_params, Component, Preset};
use crate::sd::scheduler::{SchedulerConfig, SchedulerKind};
use crate::sd::tokenizer::ClipTokenizer;
use crate::sd::unet::{PerBlock, UNet2DConditionModel, UNetConfig};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Timesteps of the held-out denoising loss.
pub const HELD_OUT_T: [usize; 3] = [100, 500, 900];

#[derive(Clone, Debug)]
pub struct PretrainOptions {
    /// One MVTec-layout category folder (with `train/good`, optionally `test/good`).
    pub dataset: PathBuf,
    /// A pixel-space preset name (`small`, `tiny-pixel`).
    pub preset: String,
    pub out: PathBuf,
    pub steps: usize,
    pub batch: usize,
    /// Peak learning rate (linear warmup, then cosine to 0).
    pub lr: f64,
    pub warmup: usize,
    pub seed: u64,
    pub checkpoint_every: usize,
    pub resume: Option<PathBuf>,
    /// Images sampled after training for the grid (0: no grid).
    pub samples: usize,
    /// DDIM steps per sample.
    pub sample_steps: usize,
    /// Standardise pixels per channel with the training set's statistics (see `PixelNorm`).
    pub pixel_norm: bool,
}

impl Default for PretrainOptions {
    fn default() -> Self {
        Self {
            dataset: PathBuf::new(),
            preset: "small".into(),
            out: PathBuf::from("pretrain-out"),
            steps: 1000,
            batch: 8,
            lr: 1e-3,
            warmup: 50,
            seed: 0,
            checkpoint_every: 250,
            resume: None,
            samples: 8,
            sample_steps: 50,
            pixel_norm: true,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PretrainReport {
    /// The trained model folder (`anodiff txt2img --model` loads it).
    pub model_dir: PathBuf,
    pub category: String,
    pub prompt: String,
    pub train_images: usize,
    pub test_images: usize,
    pub size: usize,
    pub trainable_parameters: usize,
    /// `train_log.jsonl`: one line per update (loss, lr, grad norm, time).
    pub log: PathBuf,
    pub first_loss: f64,
    /// Mean of the last 20 updates' losses.
    pub last_loss: f64,
    /// (t, mean ε-MSE over `test/good` with fixed noise) for t in [`HELD_OUT_T`]; empty without
    /// test images.
    pub held_out: Vec<(usize, f64)>,
    /// The same figures for the untrained model (same noise), as the baseline.
    pub held_out_untrained: Vec<(usize, f64)>,
    /// PNG: samples on top, real training images below.
    pub grid: Option<PathBuf>,
    pub train_secs: f64,
    pub sample_secs: f64,
    #[serde(skip)]
    pub steps: Vec<StepStats>,
}

/// "a photo of a metal texture" for the category folder `metal_texture`.
pub fn category_prompt(category: &str) -> String {
    format!("a photo of a {}", category.replace(['_', '-'], " "))
}

/// A pixel-space model in `preset`'s shapes with fresh trainable weights; returns the model and
/// the (text encoder, UNet) parameter stores whose `vars()` are its weights.
pub fn fresh_pixel_model(
    preset: &Preset,
    seed: u64,
    dev: &Device,
) -> Result<(StableDiffusion, Params, Params)> {
    if !preset.pixel_space {
        return Err(Error::invalid(format!(
            "preset `{}` works in a VAE latent space; pretraining from scratch needs a pixel-space preset (small, tiny-pixel)",
            preset.name
        )));
    }
    let te_p = fresh_params(seed, Component::TextEncoder, dev);
    let unet_p = fresh_params(seed, Component::Unet, dev);
    let sd = StableDiffusion {
        tokenizer: ClipTokenizer::embedded()?,
        text_encoder: ClipTextModel::new(&preset.text, &te_p)?,
        vae: None,
        pixel_norm: None,
        unet: UNet2DConditionModel::new(&preset.unet, &unet_p)?,
        scheduler_config: preset.scheduler.clone(),
        default_scheduler: SchedulerKind::Ddim,
        device: dev.clone(),
    };
    Ok((sd, te_p, unet_p))
}

fn load_images(samples: &[crate::data::mvtec::Sample], side: u32) -> Result<Vec<image::RgbImage>> {
    crate::io::image::load_square(samples, side, MvtecDataset::load_image)
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
    let category = crate::data::mvtec::category_name(&o.dataset).unwrap_or_else(|| "object".into());
    let prompt = category_prompt(&category);
    // Resized once to 1/8 above the training side; each step takes a random crop and flips.
    let margin = (size + size / 8) as u32;
    let train = load_images(&ds.train_good, margin)?;
    let (mut sd, te_p, unet_p) = fresh_pixel_model(&preset, o.seed, &dev)?;
    if o.pixel_norm {
        let norm = PixelNorm::from_images(&train)?;
        sd.scheduler_config.clip_sample_range = norm.range_bound();
        sd.pixel_norm = Some(norm);
    }
    // Held-out images in the space the UNet denoises.
    let test: Vec<Tensor> = load_images(&ds.test_good, size as u32)?
        .iter()
        .map(|i| sd.encode_mean(&rgb_to_tensor(i, &dev)?))
        .collect::<Result<_>>()?;
    let mut vars: Vec<_> = te_p
        .vars()
        .into_iter()
        .map(|(n, v)| (format!("text_encoder.{n}"), v))
        .collect();
    vars.extend(
        unet_p
            .vars()
            .into_iter()
            .map(|(n, v)| (format!("unet.{n}"), v)),
    );
    let trainable_parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let loss = DiffusionLoss::new(&sd.scheduler_config)?;
    let held_out_untrained = held_out_loss(&sd, &loss, &test, &prompt, o.seed)?;

    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let cfg = TrainConfig {
        steps: o.steps,
        batch_size: o.batch,
        grad_accum: 1,
        seed: o.seed,
        optimizer: AdamWConfig {
            lr: o.lr,
            ..AdamWConfig::default()
        },
        lr_schedule: LrSchedule::Cosine {
            warmup: o.warmup,
            total: o.steps,
        },
        max_grad_norm: Some(1.0),
        checkpoint_every: o.checkpoint_every,
        keep_checkpoints: 1,
        out_dir: Some(o.out.clone()),
    };
    let mut trainer = Trainer::new(cfg, vars, train.len())?.with_metadata(json!({
        "job": "pretrain", "preset": preset.name, "prompt": prompt,
        "dataset": o.dataset, "size": size,
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
    let steps = trainer.run(|batch| {
        let mut a = Augmenter::new(aug.clone(), batch.seed);
        let mut xs = Vec::with_capacity(batch.indices.len());
        for &i in &batch.indices {
            let (img, _) = a.apply(&train[i], None)?;
            xs.push(rgb_to_tensor(&img, &dev)?);
        }
        let x0 = sd.encode_mean(&Tensor::cat(&xs, 0)?)?;
        let (noise, t) = loss.draw(&x0, &mut batch.rng())?;
        // The text encoder is trained too, so its output is recomputed every step.
        let txt = sd.encode_text(&[&prompt])?.repeat((x0.dim(0)?, 1, 1))?;
        loss.loss(&sd.unet, &x0, &txt, &noise, &t, &ctx)
    })?;
    let train_secs = t0.elapsed().as_secs_f64();

    let model_dir = o.out.join("model");
    save_pixel_model(&model_dir, &sd, &preset, &te_p, &unet_p)?;
    let held_out = held_out_loss(&sd, &loss, &test, &prompt, o.seed)?;
    let t1 = Instant::now();
    let grid = if o.samples > 0 {
        let samples = sample_images(&sd, &prompt, o.samples, size, o.sample_steps, o.seed)?;
        // Evenly spaced over the sorted list: the first files are often one capture run (MTD's
        // first 126 are its darkest), which made good samples look wrongly bright beside them.
        let picks = crate::data::subsample::evenly_spaced(&ds.train_good, o.samples);
        let real = load_images(&picks, size as u32)?;
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

/// Mean ε-MSE over `test` at each of [`HELD_OUT_T`], with noise from a fixed seed (the same for
/// every model, so runs are comparable).
pub fn held_out_loss(
    sd: &StableDiffusion,
    loss: &DiffusionLoss,
    test: &[Tensor],
    prompt: &str,
    seed: u64,
) -> Result<Vec<(usize, f64)>> {
    if test.is_empty() {
        return Ok(Vec::new());
    }
    let x0 = Tensor::cat(test, 0)?;
    let n = x0.dim(0)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x004E_015E);
    let v: Vec<f32> = (0..x0.elem_count())
        .map(|_| gaussian(&mut rng) as f32)
        .collect();
    let noise = Tensor::from_vec(v, x0.dims(), x0.device())?;
    let txt = sd.encode_text(&[prompt])?;
    let ctx = ForwardCtx::default();
    // In chunks: one forward over the whole test set (190 images for MTD) held GBs of activations.
    const CHUNK: usize = 16;
    HELD_OUT_T
        .iter()
        .map(|&t| {
            let mut sum = 0.0;
            for start in (0..n).step_by(CHUNK) {
                let len = CHUNK.min(n - start);
                let x = x0.narrow(0, start, len)?;
                let e = noise.narrow(0, start, len)?;
                let c = txt.repeat((len, 1, 1))?;
                let l = loss
                    .loss(&sd.unet, &x, &c, &e, &vec![t; len], &ctx)?
                    .detach();
                // The loss is a mean over the chunk; weight it by the chunk's share.
                sum += l.to_scalar::<f32>()? as f64 * len as f64;
            }
            Ok((t, sum / n as f64))
        })
        .collect()
}

/// `n` images from the model's own scheduler config with DDIM, no guidance (the model was
/// trained with one prompt, so there is no unconditional branch); sample `i` seeded `seed + i`.
pub fn sample_images(
    sd: &StableDiffusion,
    prompt: &str,
    n: usize,
    size: usize,
    steps: usize,
    seed: u64,
) -> Result<Vec<image::RgbImage>> {
    let opts = SampleOptions {
        prompt: prompt.into(),
        steps,
        guidance: 1.0,
        width: Some(size),
        height: Some(size),
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let mut noise = SeededNoise::new(seed.wrapping_add(i));
        let x = sd.txt2img(&opts, &mut noise, &mut |_, _| {})?;
        out.extend(tensor_to_rgb(&sd.decode(&x)?)?);
    }
    Ok(out)
}

fn per_block(v: &PerBlock<usize>) -> Value {
    match v {
        PerBlock::One(x) => json!(x),
        PerBlock::Many(xs) => json!(xs),
    }
}

fn unet_config_json(c: &UNetConfig) -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "sample_size": c.sample_size,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "center_input_sample": c.center_input_sample,
        "flip_sin_to_cos": c.flip_sin_to_cos,
        "freq_shift": c.freq_shift,
        "down_block_types": c.down_block_types,
        "mid_block_type": c.mid_block_type,
        "up_block_types": c.up_block_types,
        "block_out_channels": c.block_out_channels,
        "layers_per_block": per_block(&c.layers_per_block),
        "downsample_padding": c.downsample_padding,
        "mid_block_scale_factor": c.mid_block_scale_factor,
        "act_fn": c.act_fn,
        "norm_num_groups": c.norm_num_groups,
        "norm_eps": c.norm_eps,
        "cross_attention_dim": per_block(&c.cross_attention_dim),
        "transformer_layers_per_block": per_block(&c.transformer_layers_per_block),
        "attention_head_dim": per_block(&c.attention_head_dim),
        "use_linear_projection": c.use_linear_projection,
        "upcast_attention": c.upcast_attention,
        "resnet_time_scale_shift": c.resnet_time_scale_shift,
        "time_embedding_type": c.time_embedding_type,
        "conv_in_kernel": c.conv_in_kernel,
        "conv_out_kernel": c.conv_out_kernel,
        "attention_type": c.attention_type,
    })
}

fn clip_config_json(c: &ClipTextConfig) -> Value {
    json!({
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "max_position_embeddings": c.max_position_embeddings,
        "hidden_act": match c.hidden_act {
            ClipActivation::QuickGelu => "quick_gelu",
            ClipActivation::Gelu => "gelu",
        },
        "layer_norm_eps": c.layer_norm_eps,
        "projection_dim": c.projection_dim,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
    })
}

fn scheduler_config_json(c: &SchedulerConfig) -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": c.num_train_timesteps,
        "beta_start": c.beta_start,
        "beta_end": c.beta_end,
        "beta_schedule": match c.beta_schedule {
            crate::sd::scheduler::BetaSchedule::Linear => "linear",
            crate::sd::scheduler::BetaSchedule::ScaledLinear => "scaled_linear",
            crate::sd::scheduler::BetaSchedule::SquaredcosCapV2 => "squaredcos_cap_v2",
        },
        "prediction_type": match c.prediction_type {
            crate::sd::scheduler::PredictionType::Epsilon => "epsilon",
            crate::sd::scheduler::PredictionType::VPrediction => "v_prediction",
            crate::sd::scheduler::PredictionType::Sample => "sample",
        },
        "steps_offset": c.steps_offset,
        "set_alpha_to_one": c.set_alpha_to_one,
        "clip_sample": c.clip_sample,
        "clip_sample_range": c.clip_sample_range,
        "timestep_spacing": "leading",
    })
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))
}

/// Writes a pixel-space model as a diffusers-style folder: `model_index.json` (with
/// `"anodiff_pixel_space": true` and no `vae` entry), `unet/`, `text_encoder/`, `tokenizer/`
/// (the built-in CLIP vocabulary) and `scheduler/`.
pub fn save_pixel_model(
    dir: &Path,
    sd: &StableDiffusion,
    preset: &Preset,
    text: &Params,
    unet: &Params,
) -> Result<()> {
    for sub in ["unet", "text_encoder", "tokenizer", "scheduler"] {
        mkdir(&dir.join(sub))?;
    }
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionPipeline",
            "anodiff_pixel_space": true,
            "anodiff_preset": preset.name,
            "anodiff_pixel_norm": sd.pixel_norm,
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "DDIMScheduler"],
        }),
    )?;
    let weights = |p: &Params| -> Vec<(String, Tensor)> {
        p.vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect()
    };
    write_safetensors(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        &weights(unet),
    )?;
    write_json(
        &dir.join("unet/config.json"),
        &unet_config_json(&preset.unet),
    )?;
    write_safetensors(&dir.join("text_encoder/model.safetensors"), &weights(text))?;
    write_json(
        &dir.join("text_encoder/config.json"),
        &clip_config_json(&preset.text),
    )?;
    let (vocab, merges) = crate::sd::tokenizer::ClipTokenizer::embedded_files();
    crate::io::atomic::write_atomic(&dir.join("tokenizer/vocab.json"), vocab.as_bytes())?;
    crate::io::atomic::write_atomic(&dir.join("tokenizer/merges.txt"), merges.as_bytes())?;
    write_json(
        &dir.join("tokenizer/tokenizer_config.json"),
        &json!({"model_max_length": 77, "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>"}),
    )?;
    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &scheduler_config_json(&sd.scheduler_config),
    )?;
    Ok(())
}
