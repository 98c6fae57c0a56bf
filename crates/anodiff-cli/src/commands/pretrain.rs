//! `anodiff pretrain`: train a pixel-space preset from scratch on one MVTec-layout category.

use crate::progress::bar;
use anodiff::train::pretrain::{pretrain, PretrainOptions};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pixel-space preset to train (small, tiny-pixel; see `anodiff presets`).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// MVTec-layout category folder (train/good is trained on, test/good is held out).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Run folder: model/, checkpoints, train_log.jsonl, samples.png, report.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimiser updates.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Images per update.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Compute each batch as this many equal micro-batches side by side, one per core (faster
    /// for small networks on 2+ cores; the noise of each micro-batch is drawn separately, so
    /// results depend on this number, never on the thread count). Must divide --batch.
    #[arg(long, default_value_t = 1)]
    pub micro_batches: usize,
    /// Peak learning rate (linear warmup, then cosine to 0).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Warmup updates.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N updates (0: only at the end).
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: usize,
    /// Continue from a checkpoint folder (or a run folder: its latest checkpoint).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Images sampled after training into samples.png (0: none).
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// DDIM steps per sample.
    #[arg(long, default_value_t = 50)]
    pub sample_steps: usize,
    /// Denoise plain [-1, 1] pixels instead of pixels standardised with the training set's
    /// per-channel mean and std (stored in model_index.json as `anodiff_pixel_norm`).
    #[arg(long)]
    pub no_pixel_norm: bool,
    /// Probability that an image is trained with the empty prompt (the unconditional mode that
    /// classifier-free guidance, e.g. DualAnoDiff's sampling, needs).
    #[arg(long, default_value_t = 0.1)]
    pub prompt_dropout: f64,
    /// Probability that an image is replaced by a random region of itself on mid-grey, trained with
    /// the empty prompt. A base for DualAnoDiff needs these: its part images are regions on grey,
    /// which a model that saw only whole images cannot denoise.
    #[arg(long, default_value_t = 0.0)]
    pub canvas: f64,
    /// Train on random preset-size windows of the images scaled by this factor (1 = native
    /// resolution) instead of on whole images squashed to the preset size: for defects a few
    /// pixels wide at native scale, and as the base of `dual-train --sampling crop`.
    #[arg(long)]
    pub tile_scale: Option<f64>,
}

pub fn run(a: Args) -> Result<()> {
    let o = PretrainOptions {
        dataset: a.dataset,
        preset: a.preset,
        out: a.out,
        steps: a.steps,
        batch: a.batch,
        micro_batches: a.micro_batches,
        lr: a.lr,
        warmup: a.warmup,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        samples: a.samples,
        sample_steps: a.sample_steps,
        pixel_norm: !a.no_pixel_norm,
        prompt_dropout: a.prompt_dropout,
        canvas: a.canvas,
        tile_scale: a.tile_scale,
    };
    let pb = bar(o.steps as u64, "pretrain");
    let pb2 = pb.clone();
    let r = pretrain(&o, move |s| {
        pb2.set_position(s.step as u64);
        pb2.set_message(format!("pretrain loss {:.4}", s.loss));
    })?;
    pb.finish_and_clear();
    eprintln!(
        "trained {} parameters on {} images ({}px, \"{}\") in {:.1} s: loss {:.4} (first step) -> {:.4} (mean of last 20)",
        r.trainable_parameters, r.train_images, r.size, r.prompt, r.train_secs, r.first_loss, r.last_loss
    );
    for ((t, l), (_, u)) in r.held_out.iter().zip(&r.held_out_untrained) {
        eprintln!("held-out loss at t={t}: {l:.4} (untrained {u:.4})");
    }
    eprintln!(
        "wrote {} (anodiff txt2img --model {} ...)",
        r.model_dir.display(),
        r.model_dir.display()
    );
    if let Some(g) = &r.grid {
        eprintln!(
            "samples (top) and training images (bottom): {}",
            g.display()
        );
    }
    Ok(())
}
