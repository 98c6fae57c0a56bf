//! Writes what tools/parity/check_config_roundtrip.py feeds to diffusers / transformers:
//!   OUT/configs/<kind>/<name>/   each config of tests/fixtures/configs, loaded and saved by anodiff
//!   OUT/models/<preset>/         whole model folders saved by `StableDiffusion::save`: `tiny`
//!                                (latent space, with VAE) and `tiny-pixel` (pixel space, pixel norm)
//!   OUT/models/<preset>.check.safetensors
//!                                token ids, text embeddings, a UNet input and our UNet output
//! Usage: `cargo run --release --example write_roundtrip_folders [OUT]`
//! (OUT defaults to target/config-roundtrip, which git ignores).

use anodiff::nn::tensor_files::write_safetensors;
use anodiff::sd::attention::ForwardCtx;
use anodiff::sd::clip::ClipTextConfig;
use anodiff::sd::config_file::ConfigFile;
use anodiff::sd::pipeline::StableDiffusion;
use anodiff::sd::pixel_norm::PixelNorm;
use anodiff::sd::presets::Preset;
use anodiff::sd::scheduler::{SchedulerConfig, SchedulerKind};
use anodiff::sd::unet::UNetConfig;
use anodiff::sd::vae::VaeConfig;
use anodiff::Result;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
/// The prompt whose token ids and embeddings are checked.
const PROMPT: &str = "a photo of a metal_nut, scratched!";

/// Loads `src`'s config as `C` and saves it into `dst`.
fn resave<C: ConfigFile>(src: &Path, dst: &Path) -> Result<()> {
    C::load_config(src)?.save_config(dst).map(|_| ())
}

fn configs(out: &Path) -> Result<usize> {
    let fixtures = Path::new(ROOT).join("tests/fixtures/configs");
    let mut n = 0;
    for kind in ["unet", "vae", "text_encoder", "scheduler"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures.join(kind))
            .map_err(|e| anodiff::Error::io(fixtures.join(kind), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for src in names {
            let dst = out.join(kind).join(src.file_name().unwrap());
            match kind {
                "unet" => resave::<UNetConfig>(&src, &dst)?,
                "vae" => resave::<VaeConfig>(&src, &dst)?,
                "text_encoder" => resave::<ClipTextConfig>(&src, &dst)?,
                _ => resave::<SchedulerConfig>(&src, &dst)?,
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Saves a fresh `preset` model and the reference figures for it.
fn model(out: &Path, preset: &str, pixel_norm: Option<PixelNorm>) -> Result<()> {
    let dev = Device::Cpu;
    let p = Preset::by_name(preset)?;
    let (mut sd, params) = StableDiffusion::from_preset_with_params(&p, 7, &dev)?;
    if let Some(n) = pixel_norm {
        sd.scheduler_config.clip_sample_range = n.range_bound();
        sd.pixel_norm = Some(n);
        sd.default_scheduler = SchedulerKind::Ddim;
    }
    let dir = out.join(preset);
    sd.save(&dir, &params)?;
    let ids = sd.tokenizer.encode(PROMPT);
    // Stored as f32 (exact for ids below 2^24): the safetensors writer keeps floats only.
    let ids_t = Tensor::new(ids.as_slice(), &dev)?.to_dtype(DType::F32)?;
    let text = sd.encode_text(&[PROMPT])?;
    let side = p.unet.sample_size.unwrap_or(16);
    let sample = Tensor::randn(0f32, 1.0, (2, p.unet.in_channels, side, side), &dev)?;
    let timesteps = Tensor::new(&[31f32, 640.0], &dev)?;
    let ehs = text.repeat((2, 1, 1))?;
    let unet_out = sd
        .unet
        .forward(&sample, &timesteps, &ehs, &ForwardCtx::default())?;
    let check: Vec<(String, Tensor)> = [
        ("ids", ids_t),
        ("text", text),
        ("sample", sample),
        ("timesteps", timesteps),
        ("unet_out", unet_out),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    write_safetensors(&out.join(format!("{preset}.check.safetensors")), &check)
}

fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/config-roundtrip"));
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| anodiff::Error::io(&out, e))?;
    }
    let n = configs(&out.join("configs"))?;
    model(&out.join("models"), "tiny", None)?;
    let norm = PixelNorm {
        mean: [-0.2, 0.05, 0.3],
        std: [0.25, 0.3, 0.2],
    };
    model(&out.join("models"), "tiny-pixel", Some(norm))?;
    println!(
        "wrote {n} configs and 2 model folders under {}",
        out.display()
    );
    Ok(())
}
