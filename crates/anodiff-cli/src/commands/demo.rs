//! `anodiff demo`: an offline end-to-end run on an embedded default, no files or network needed.
//!
//! Today it exercises the whole sampling stack (tokenizer, CLIP, UNet, VAE, every scheduler,
//! inpainting) on the `tiny` preset with untrained random weights and writes what it produced to
//! an HTML page. Pretraining on a synthetic defect dataset (so the images show something) and the
//! DualAnoDiff / AnomalySD stages are added to this command as they land.

use crate::progress::bar;
use anodiff::sd::image::{mask_to_tensor, rgb_to_tensor, tensor_to_rgb};
use anodiff::sd::noise::SeededNoise;
use anodiff::sd::pipeline::{SampleOptions, StableDiffusion};
use anodiff::sd::presets::Preset;
use anodiff::sd::scheduler::SchedulerKind;
use anyhow::{Context, Result};
use candle_core::Device;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder for the images and report.html (created; existing files are replaced).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Random seed for weights and sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Denoising steps per image.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
}

const PROMPT: &str = "a photo of a scratched metal surface";

pub fn run(a: Args) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let dev = Device::Cpu;
    let preset = Preset::by_name("tiny")?;
    let sd = StableDiffusion::from_preset(&preset, a.seed, &dev)?;
    let size = 64;
    let mut rows = Vec::new();
    let kinds = [
        SchedulerKind::Pndm,
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::Ddpm,
    ];
    let pb = bar((kinds.len() + 1) as u64, "demo: sampling");
    for kind in kinds {
        let opts = SampleOptions {
            prompt: PROMPT.into(),
            steps: a.steps,
            guidance: 7.5,
            width: size,
            height: size,
            scheduler: Some(kind),
            ..Default::default()
        };
        let t = Instant::now();
        let lat = sd.txt2img(&opts, &mut SeededNoise::new(a.seed), &mut |_, _| {})?;
        let file = format!("txt2img_{kind:?}.png").to_lowercase();
        save(&sd, &lat, &a.out.join(&file))?;
        rows.push((
            format!("txt2img, {kind:?}"),
            file,
            t.elapsed().as_secs_f64(),
        ));
        pb.inc(1);
    }

    // Inpainting needs the 9-channel UNet of the same preset.
    let mut inp_preset = preset.clone();
    inp_preset.unet.in_channels = 9;
    let inp = StableDiffusion::from_preset(&inp_preset, a.seed, &dev)?;
    let (image, mask) = demo_image_and_mask(size as u32);
    anodiff::io::save_png(&a.out.join("inpaint_input.png"), &image)?;
    let mask_rgb = image::DynamicImage::ImageLuma8(mask.clone()).to_rgb8();
    anodiff::io::save_png(&a.out.join("inpaint_mask.png"), &mask_rgb)?;
    let opts = SampleOptions {
        prompt: PROMPT.into(),
        steps: a.steps,
        width: size,
        height: size,
        ..Default::default()
    };
    let t = Instant::now();
    let lat = inp.inpaint(
        &opts,
        &rgb_to_tensor(&image, &dev)?,
        &mask_to_tensor(&mask, &dev)?,
        1.0,
        &mut SeededNoise::new(a.seed),
        &mut |_, _| {},
    )?;
    save(&inp, &lat, &a.out.join("inpaint.png"))?;
    rows.push((
        "inpaint (input, mask, output)".into(),
        "inpaint_input.png inpaint_mask.png inpaint.png".into(),
        t.elapsed().as_secs_f64(),
    ));
    pb.finish_and_clear();

    let report = a.out.join("report.html");
    anodiff::io::write_atomic(&report, html(&a, &rows).as_bytes())?;
    eprintln!(
        "wrote {} ({} images) in {:.1} s",
        report.display(),
        rows.len() + 2,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn save(sd: &StableDiffusion, latents: &candle_core::Tensor, path: &Path) -> Result<()> {
    let img = tensor_to_rgb(&sd.decode(latents)?)?;
    anodiff::io::save_png(path, &img[0])?;
    Ok(())
}

/// A brushed-metal-like gradient with a rectangular mask in the middle.
fn demo_image_and_mask(size: u32) -> (image::RgbImage, image::GrayImage) {
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        let v = (120 + (x * 60 / size) + ((y * 7) % 11) * 3) as u8;
        image::Rgb([v, v, v.saturating_add(8)])
    });
    let (lo, hi) = (size / 4, 3 * size / 4);
    let mask = image::GrayImage::from_fn(size, size, |x, y| {
        let inside = (lo..hi).contains(&x) && (size * 3 / 8..size * 5 / 8).contains(&y);
        image::Luma([if inside { 255 } else { 0 }])
    });
    (img, mask)
}

fn html(a: &Args, rows: &[(String, String, f64)]) -> String {
    let mut s = String::from(
        "<!doctype html><meta charset=utf-8><title>anodiff demo</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto}\
         img{width:128px;image-rendering:pixelated;border:1px solid #ccc;margin-right:4px}\
         td{padding:6px}</style><h1>anodiff demo</h1>",
    );
    let _ = write!(
        s,
        "<p>Preset <b>tiny</b> with <b>untrained random weights</b> (seed {}), {} steps, prompt \
         “{PROMPT}”. These images are noise-like by construction: this run checks that the full \
         sampling stack (CLIP tokenizer and text encoder, UNet with cross-attention, VAE, the DDPM, \
         DDIM, PNDM and Euler schedulers, 9-channel inpainting) runs end to end offline. \
         Pretraining on a defect dataset, DualAnoDiff generation and AnomalySD detection are \
         added to this demo as they are implemented.</p><table>",
        a.seed, a.steps
    );
    for (what, files, secs) in rows {
        let imgs: String = files
            .split(' ')
            .map(|f| format!("<img src=\"{f}\" alt=\"{f}\">"))
            .collect();
        let _ = write!(
            s,
            "<tr><td>{what}</td><td>{imgs}</td><td>{secs:.2} s</td></tr>"
        );
    }
    s.push_str("</table>");
    s
}
