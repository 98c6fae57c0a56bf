//! `anodiff presets`: the built-in model configurations with their parameter counts.

use anodiff::sd::presets::Preset;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one JSON object per preset instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn millions(n: usize) -> String {
    format!("{:.2} M", n as f64 / 1e6)
}

pub fn run(a: Args) -> Result<()> {
    if !a.json {
        println!(
            "{:<13} {:>6} {:>10} {:>10} {:>10}  description",
            "preset", "px", "UNet", "VAE", "text"
        );
    }
    for p in Preset::all() {
        let c = p.parameter_counts()?;
        if a.json {
            let v = serde_json::json!({
                "name": p.name, "resolution": p.resolution, "latent": p.latent_size(),
                "unet": c.unet, "vae": c.vae, "text_encoder": c.text_encoder, "pixel_space": p.pixel_space,
                "description": p.description,
            });
            println!("{v}");
        } else {
            println!(
                "{:<13} {:>6} {:>10} {:>10} {:>10}  {}",
                p.name,
                p.resolution,
                millions(c.unet),
                millions(c.vae),
                millions(c.text_encoder),
                p.description
            );
        }
    }
    Ok(())
}
