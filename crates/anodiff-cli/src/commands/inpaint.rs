//! `anodiff inpaint`: repaint the masked region of an image with a 9-channel inpainting UNet.

use super::sample::{save, Common};
use crate::progress::bar;
use anodiff::io::image::{load_mask, load_rgb};
use anodiff::io::image_tensor::{mask_to_tensor, rgb_to_tensor};
use anyhow::{bail, Result};
use candle_core::Device;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The image to edit; its size is the output size (width and height multiples of the
    /// model's VAE factor: 8 for SD, 1 for pixel-space models).
    #[arg(long)]
    pub image: PathBuf,
    /// Mask of the same size: white = repaint, black = keep.
    #[arg(long)]
    pub mask: PathBuf,
    /// Share of the noise schedule to run: 1 = repaint from pure noise, < 1 = start from the noised image.
    #[arg(long, default_value_t = 1.0)]
    pub strength: f64,
}

pub fn run(a: Args) -> Result<()> {
    let img = load_rgb(&a.image)?;
    let mask = load_mask(&a.mask)?;
    if img.dimensions() != mask.dimensions() {
        bail!(
            "{} is {}x{} but {} is {}x{}: image and mask must have the same size",
            a.image.display(),
            img.width(),
            img.height(),
            a.mask.display(),
            mask.width(),
            mask.height()
        );
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    let sd = a.common.load()?;
    let f = sd.vae_scale_factor();
    if !w.is_multiple_of(f) || !h.is_multiple_of(f) {
        bail!(
            "{} is {w}x{h}: width and height must be multiples of {f} (this model's VAE factor)",
            a.image.display()
        );
    }
    let opts = a.common.options(Some(w), Some(h));
    let dev = Device::Cpu;
    let pb = bar(opts.steps as u64, "inpainting");
    let latents = sd.inpaint(
        &opts,
        &rgb_to_tensor(&img, &dev)?,
        &mask_to_tensor(&mask, &dev)?,
        a.strength,
        &mut a.common.noise(),
        &mut |i, n| {
            pb.set_length(n as u64);
            pb.set_position(i as u64)
        },
    )?;
    pb.finish_and_clear();
    save(&sd, &latents, &a.common.out)
}
