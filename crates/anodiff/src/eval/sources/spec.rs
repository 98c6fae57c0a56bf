//! Building a source from its spec string, and a preview sheet to look at what a source makes.

use super::cutpaste::{CutPaste, CutPasteKind};
use super::dir::DirSource;
use super::draem::Draem;
use super::fewshot::FewShotReal;
use super::mix::{split_mix, MixSource};
use super::{AnomalyPair, AnomalySource, SourceContext};
use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::Path;

/// The accepted spec forms.
pub const SOURCE_SPECS: [&str; 6] = [
    "fewshot-real",
    "cutpaste",
    "cutpaste-scar",
    "draem",
    "dir:PATH",
    "A+B (a uniform mixture, e.g. fewshot-real+dir:PATH)",
];

/// The named sources (everything but `dir:` and mixtures).
pub const NAMED: [&str; 4] = ["fewshot-real", "cutpaste", "cutpaste-scar", "draem"];

/// Parses `fewshot-real | cutpaste | cutpaste-scar | draem | dir:PATH`, or a mixture `A+B[+…]`
/// of them (each draw from one part chosen uniformly), into a source.
pub fn from_spec(spec: &str, ctx: &SourceContext) -> Result<Box<dyn AnomalySource>> {
    let parts = split_mix(spec, &NAMED);
    if parts.len() > 1 {
        let built = parts
            .iter()
            .map(|p| single(p, ctx))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Box::new(MixSource::new(spec, built)));
    }
    single(spec, ctx)
}

fn single(spec: &str, ctx: &SourceContext) -> Result<Box<dyn AnomalySource>> {
    if ctx.size < 2 {
        return Err(Error::invalid(format!(
            "anomaly source `{spec}`: size {} is too small",
            ctx.size
        )));
    }
    Ok(match spec {
        "fewshot-real" => Box::new(FewShotReal::new(ctx)?),
        "cutpaste" => Box::new(CutPaste::new(ctx, CutPasteKind::Rect)),
        "cutpaste-scar" => Box::new(CutPaste::new(ctx, CutPasteKind::Scar)),
        "draem" => Box::new(Draem::new(ctx)),
        _ => match spec.strip_prefix("dir:") {
            Some(path) if !path.is_empty() => {
                Box::new(DirSource::open(Path::new(path), ctx.size, spec)?)
            }
            _ => {
                return Err(Error::invalid(format!(
                    "unknown anomaly source `{spec}`; valid: {}",
                    SOURCE_SPECS.join(", ")
                )))
            }
        },
    })
}

/// The image with its mask tinted red (60 % red over the masked pixels).
pub fn mask_overlay(pair: &AnomalyPair) -> RgbImage {
    let mut out = pair.image.clone();
    for (p, m) in out.pixels_mut().zip(pair.mask.pixels()) {
        if m[0] != 0 {
            *p = Rgb([
                (p[0] as f32 * 0.4 + 255.0 * 0.6) as u8,
                (p[1] as f32 * 0.4) as u8,
                (p[2] as f32 * 0.4) as u8,
            ]);
        }
    }
    out
}

/// `n` pairs drawn with `seed`, as a sheet of columns: each column is one pair, the image on top and
/// the mask overlay below; at most 8 columns per band, bands stacked, 2-px white gaps.
pub fn preview_grid(src: &mut dyn AnomalySource, n: usize, seed: u64) -> Result<RgbImage> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pairs = (0..n)
        .map(|_| src.sample(&mut rng))
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = pairs.first() else {
        return Ok(RgbImage::from_pixel(1, 1, Rgb([255, 255, 255])));
    };
    let (w, h) = first.image.dimensions();
    let cols = n.min(8) as u32;
    let bands = n.div_ceil(8) as u32;
    let (cw, bh) = (w + 2, 2 * (h + 2) + 4);
    let mut sheet = RgbImage::from_pixel(cols * cw, bands * bh, Rgb([255, 255, 255]));
    for (i, p) in pairs.iter().enumerate() {
        let (c, b) = (i as u32 % 8, i as u32 / 8);
        let (x, y) = ((c * cw) as i64, (b * bh) as i64);
        image::imageops::replace(&mut sheet, &p.image, x, y);
        image::imageops::replace(&mut sheet, &mask_overlay(p), x, y + (h + 2) as i64);
    }
    Ok(sheet)
}
