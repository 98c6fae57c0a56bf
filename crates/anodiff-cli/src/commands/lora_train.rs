//! `anodiff lora-train`: DreamBooth-style LoRA fine-tune of a model's UNet on a folder of images.

use crate::model::load_model;
use crate::progress::bar;
use anodiff::train::lora_finetune::{lora_finetune, tail_mean, LoraTrainOptions};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// diffusers model folder (4-channel UNet). Either this or --preset.
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// Built-in configuration with fresh random weights (smoke runs and tests; see `anodiff presets`).
    #[arg(long)]
    pub preset: Option<String>,
    /// Folder of training images (png, jpg, bmp); resized and centre-cropped to --size.
    #[arg(long)]
    pub data: PathBuf,
    /// The prompt every training image is paired with (e.g. "a photo of sks metal tile").
    #[arg(long)]
    pub prompt: String,
    /// LoRA rank.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// LoRA alpha (scale = alpha / rank; default: alpha = rank).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Optimiser updates.
    #[arg(long, default_value_t = 500)]
    pub steps: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Images per micro-batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Micro-batches per update.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Linear learning-rate warmup updates.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Training image side in pixels (default: the model's native resolution).
    #[arg(long)]
    pub size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N updates (0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Output folder: pytorch_lora_weights.safetensors, checkpoints, train_log.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from a checkpoint folder (or a run folder: its latest checkpoint).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// After training, sample N images with and without the LoRA (same seeds), report their
    /// latent distance to the nearest training image and write a comparison grid PNG.
    #[arg(long, default_value_t = 4)]
    pub eval_samples: usize,
}

pub fn run(a: Args) -> Result<()> {
    let sd = load_model(a.model.as_deref(), a.preset.as_deref(), a.seed)?;
    let o = LoraTrainOptions {
        data: a.data,
        prompt: a.prompt,
        rank: a.rank,
        alpha: a.alpha,
        steps: a.steps,
        lr: a.lr,
        batch: a.batch,
        grad_accum: a.grad_accum,
        warmup: a.warmup,
        size: a.size,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        out: a.out,
        resume: a.resume,
        eval_samples: a.eval_samples,
    };
    let pb = bar(o.steps as u64, "lora-train");
    let pb2 = pb.clone();
    let r = lora_finetune(&sd, &o, move |s| {
        pb2.set_position(s.step as u64);
        pb2.set_message(format!("lora-train loss {:.4}", s.loss));
    })?;
    pb.finish_and_clear();
    eprintln!(
        "trained {} LoRA parameters on {} images ({}px): loss {:.4} (first step) -> {:.4} (mean of last 20)",
        r.trainable_parameters,
        r.images,
        r.size,
        r.first_loss,
        tail_mean(&r.steps, 20)
    );
    eprintln!("wrote {}", r.lora_file.display());
    if let Some(e) = &r.effect {
        eprintln!(
            "{} samples, RMS latent distance to the nearest training image: {:.4} without LoRA, {:.4} with; grid: {}",
            e.samples,
            e.nearest_rms_without,
            e.nearest_rms_with,
            e.grid.display()
        );
    }
    let report = r.lora_file.with_file_name("report.json");
    anodiff::io::json::write_json(&report, &r)?;
    Ok(())
}
