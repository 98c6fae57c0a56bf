//! `anodiff detect-train`: train AnomalySD's one inpainting model on the normal images of several
//! categories.

use crate::progress::bar;
use anodiff::data::foreground::ForegroundSpec;
use anodiff::detect::masks::TrainMaskOptions;
use anodiff::detect::prompts::{PromptBook, PromptLevels};
use anodiff::detect::train::{detect_train_with, BaseModel, DetectTrainOptions};
use anodiff::detect::vae_tune::Perceptual;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Inpainting model folder to fine-tune (e.g. SD-1.5-inpainting in diffusers layout).
    #[arg(long, conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// Pixel-space inpainting preset trained from scratch (small64-inpaint, small-inpaint).
    #[arg(long)]
    pub preset: Option<String>,
    /// MVTec-layout category folder; repeat for every category the one model must serve.
    #[arg(long = "dataset", required = true)]
    pub datasets: Vec<PathBuf>,
    /// Run folder: model/ (or the LoRA file), detect_config.json, checkpoints, train_log.jsonl, samples.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimiser updates.
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    /// Images per update.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Compute each batch as this many equal micro-batches side by side, one per core (faster
    /// for small networks on 2+ cores; each micro-batch draws its own noise, so results depend
    /// on this number, never on the thread count). Must divide --batch.
    #[arg(long, default_value_t = 1)]
    pub micro_batches: usize,
    /// Peak learning rate (warmup, then cosine to 0). For fine-tuning a pretrained folder use far
    /// less (e.g. 1e-5 full, 1e-4 LoRA).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Warmup updates.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Train a LoRA of this rank on the UNet attention (base frozen) instead of every weight.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N updates (0: only at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: usize,
    /// Continue from a checkpoint folder (or a run folder: its latest checkpoint).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Training side in pixels (default: the model's native size).
    #[arg(long)]
    pub size: Option<usize>,
    /// Prompt book (JSON like crates/anodiff/assets/prompts.json; default: the embedded one).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Prompt levels: both (global + detailed sentence) or global.
    #[arg(long, default_value = "both")]
    pub prompt_levels: String,
    /// Probability that an image is trained with the empty prompt.
    #[arg(long, default_value_t = 0.1)]
    pub prompt_dropout: f64,
    /// Grid scales whose cells the training masks include (comma-separated; the inference scales).
    #[arg(long, default_value = "2,4,8", value_delimiter = ',')]
    pub scales: Vec<usize>,
    /// Foreground masks that place the training masks: classical (weight-free estimate) or dir:PATH.
    #[arg(long, default_value = "classical")]
    pub foreground: ForegroundSpec,
    /// Training images inpainted into samples.png after training (0: none).
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Fine-tune the VAE decoder for this many updates after the UNet (0: off). Full runs of a
    /// latent-space --model only (not with --lora-rank; pixel-space models have no VAE).
    #[arg(long, default_value_t = 0)]
    pub vae_steps: usize,
    /// Images per decoder update.
    #[arg(long, default_value_t = 2)]
    pub vae_batch: usize,
    /// Peak learning rate of the decoder.
    #[arg(long, default_value_t = 1e-5)]
    pub vae_lr: f64,
    /// Weight β of the extra decoder loss term (the paper's β is unpublished; 0 = MSE only).
    #[arg(long, default_value_t = 0.0)]
    pub vae_beta: f64,
    /// Extra decoder loss term weighted by --vae-beta: none; gradient (weight-free L1 distance
    /// of Sobel image gradients; not a learned perceptual metric); or lpips (needs
    /// --lpips-weights).
    #[arg(long, default_value = "none")]
    pub vae_perceptual: Perceptual,
    /// LPIPS network weights for --vae-perceptual lpips: a safetensors file with the tensors of
    /// `lpips.LPIPS(net='alex'|'vgg').state_dict()` (tools/export_lpips_weights.py writes it).
    #[arg(long)]
    pub lpips_weights: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let base = match (a.model, a.preset) {
        (Some(m), None) => BaseModel::Folder(m),
        (None, Some(p)) => BaseModel::Preset(p),
        (None, None) => BaseModel::Preset("small64-inpaint".into()),
        (Some(_), Some(_)) => bail!("give --model or --preset, not both"),
    };
    let levels = match a.prompt_levels.as_str() {
        "both" => PromptLevels::Both,
        "global" => PromptLevels::Global,
        other => bail!("unknown --prompt-levels `{other}` (both, global)"),
    };
    let prompts = match &a.prompts {
        Some(p) => PromptBook::load(p)?,
        None => PromptBook::default(),
    };
    let o = DetectTrainOptions {
        datasets: a.datasets,
        base,
        out: a.out,
        steps: a.steps,
        batch: a.batch,
        micro_batches: a.micro_batches,
        lr: a.lr,
        warmup: a.warmup,
        lora_rank: a.lora_rank,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        size: a.size,
        prompts,
        levels,
        prompt_dropout: a.prompt_dropout,
        masks: TrainMaskOptions {
            scales: a.scales,
            ..TrainMaskOptions::default()
        },
        foreground: a.foreground,
        samples: a.samples,
        vae_steps: a.vae_steps,
        vae_batch: a.vae_batch,
        vae_lr: a.vae_lr,
        vae_beta: a.vae_beta,
        vae_perceptual: a.vae_perceptual,
        vae_lpips_weights: a.lpips_weights,
    };
    let pb = bar(o.steps as u64, "detect-train");
    let pb2 = pb.clone();
    let pb3 = pb.clone();
    let r = detect_train_with(
        &o,
        move |s| {
            pb2.set_position(s.step as u64);
            pb2.set_message(format!("detect-train loss {:.4}", s.loss));
        },
        move |s| {
            pb3.set_length(s.total_steps as u64);
            pb3.set_position(s.step as u64);
            pb3.set_message(format!("VAE decoder loss {:.5}", s.loss));
        },
    )?;
    pb.finish_and_clear();
    let imgs: Vec<String> = r.images.iter().map(|(c, n)| format!("{c} {n}")).collect();
    eprintln!(
        "trained {} parameters on {} ({} px) in {:.1} s: loss {:.4} (first update) -> {:.4} (mean of last 20)",
        r.trainable_parameters,
        imgs.join(", "),
        r.size,
        r.train_secs,
        r.first_loss,
        r.last_loss
    );
    if o.vae_steps > 0 && r.vae.is_none() {
        eprintln!("--vae-steps skipped: the model is pixel-space (it has no VAE decoder to tune)");
    }
    if let Some(v) = &r.vae {
        eprintln!(
            "VAE decoder ({} parameters, {} updates, term {} with beta {}): reconstruction MSE {:.5} -> {:.5}, gradient L1 {:.5} -> {:.5} on {} training images",
            v.trainable_parameters,
            v.steps.len(),
            v.perceptual,
            v.beta,
            v.mse_before,
            v.mse_after,
            v.gradient_l1_before,
            v.gradient_l1_after,
            v.images
        );
        if let (Some(b), Some(a)) = (v.lpips_before, v.lpips_after) {
            eprintln!("VAE decoder LPIPS {b:.5} -> {a:.5}");
        }
    }
    if let Some(s) = &r.samples {
        eprintln!(
            "inpainted training images (input | masked | repainted): {}",
            s.display()
        );
    }
    eprintln!(
        "run folder: {} (anodiff detect --run {} ...)",
        r.run.display(),
        r.run.display()
    );
    Ok(())
}
