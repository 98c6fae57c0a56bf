//! Options and steps shared by the sampling commands.

use anodiff::sd::noise::SeededNoise;
use anodiff::sd::pipeline::{SampleOptions, StableDiffusion};
use anodiff::sd::scheduler::SchedulerKind;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).
    #[arg(long)]
    pub model: PathBuf,
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
    pub fn options(&self, width: usize, height: usize) -> SampleOptions {
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
        StableDiffusion::load(&self.model, &Device::Cpu)
            .with_context(|| format!("loading model {}", self.model.display()))
    }

    pub fn noise(&self) -> SeededNoise {
        SeededNoise::new(self.seed)
    }
}

/// Decodes latents and writes the first image as PNG.
pub fn save(sd: &StableDiffusion, latents: &Tensor, out: &Path) -> Result<()> {
    let images = anodiff::sd::image::tensor_to_rgb(&sd.decode(latents)?)?;
    anodiff::io::save_png(out, &images[0])?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
