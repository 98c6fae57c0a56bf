//! `anodiff txt2img`: text-to-image.

use super::sample::{save, Common};
use crate::progress::bar;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Image width in pixels, a multiple of the VAE factor (8 for SD) [default: the model's
    /// native size, UNet sample_size × VAE factor, e.g. 512 for SD-1.5].
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels, as --width [default: the model's native size].
    #[arg(long)]
    pub height: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    let opts = a.common.options(a.width, a.height);
    let sd = a.common.load()?;
    let pb = bar(opts.steps as u64, "denoising");
    let latents = sd.txt2img(&opts, &mut a.common.noise(), &mut |i, n| {
        pb.set_length(n as u64);
        pb.set_position(i as u64)
    })?;
    pb.finish_and_clear();
    save(&sd, &latents, &a.common.out)
}
