//! Options and steps shared by the sampling commands.

use crate::model::load_model;
use anodiff::sd::lora::apply_file;
use anodiff::sd::noise::SeededNoise;
use anodiff::sd::pipeline::{SampleOptions, StableDiffusion};
use anodiff::sd::scheduler::SchedulerKind;
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// Instead of --model: a built-in configuration with random weights seeded by --weights-seed
    /// (smoke runs; the same preset and seed that `lora-train --preset` used).
    #[arg(long)]
    pub preset: Option<String>,
    /// Seed of the preset's random weights (use the `--seed` given to `lora-train --preset`).
    #[arg(long, default_value_t = 0)]
    pub weights_seed: u64,
    /// A LoRA file to apply to the UNet (and text encoder, if the file has that part):
    /// diffusers/peft or kohya names, e.g. the output of `anodiff lora-train`.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// What the image should show.
    #[arg(long)]
    pub prompt: String,
    /// What it should not show (the unconditional prompt of classifier-free guidance).
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Number of denoising steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 = off).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Random seed: the same seed gives the same image bytes on the same machine.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampler: ddim, pndm, euler or ddpm (default: the model folder's own scheduler).
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Output PNG file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
}

impl Common {
    /// The library's sampling options from these flags; `None` sizes are resolved by the pipeline
    /// (txt2img: the model's native size).
    pub fn options(&self, width: Option<usize>, height: Option<usize>) -> SampleOptions {
        SampleOptions {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance: self.guidance,
            width,
            height,
            scheduler: self.scheduler,
            eta: self.eta,
        }
    }

    pub fn load(&self) -> Result<StableDiffusion> {
        let sd = load_model(
            self.model.as_deref(),
            self.preset.as_deref(),
            self.weights_seed,
        )?;
        if let Some(path) = &self.lora {
            let applied = apply_file(&sd.unet, &sd.text_encoder, path)
                .with_context(|| format!("applying LoRA {}", path.display()))?;
            if let Some(first) = applied.skipped.first() {
                eprintln!(
                    "warning: {}: {} entries target layers anodiff cannot adapt yet (skipped), e.g. {first}",
                    path.display(),
                    applied.skipped.len(),
                );
            }
        }
        Ok(sd)
    }

    pub fn noise(&self) -> SeededNoise {
        SeededNoise::new(self.seed)
    }
}

/// Decodes latents and writes the first image as PNG.
pub fn save(sd: &StableDiffusion, latents: &Tensor, out: &Path) -> Result<()> {
    let images = anodiff::io::image_tensor::tensor_to_rgb(&sd.decode(latents)?)?;
    anodiff::io::image::save_png(out, &images[0])?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
