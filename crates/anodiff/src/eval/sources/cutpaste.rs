//! CutPaste (Li et al., CVPR 2021): a patch cut from a defect-free image, colour-jittered and pasted
//! back elsewhere in the same image. `cutpaste` pastes a rectangle; `cutpaste-scar` a thin rotated
//! strip. The mask is exactly the set of pixels written.

use super::{AnomalyPair, AnomalySource, SourceContext};
use crate::error::Result;
use image::{imageops, GrayImage, Luma, RgbImage};
use rand::rngs::StdRng;
use rand::Rng;

/// Shape of the pasted patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutPasteKind {
    /// Rectangle of 2–15 % of the image area, aspect ratio log-uniform in [0.3, 3.3].
    Rect,
    /// Strip 2–16 × 10–25 px at 256 px (scaled with the size), rotated by −45..45°.
    Scar,
}

/// The `cutpaste` and `cutpaste-scar` sources.
pub struct CutPaste {
    ctx: SourceContext,
    kind: CutPasteKind,
}

impl CutPaste {
    /// A source pasting `kind` patches into the context's good images.
    pub fn new(ctx: &SourceContext, kind: CutPasteKind) -> Self {
        Self {
            ctx: ctx.clone(),
            kind,
        }
    }
}

/// Brightness and contrast jitter of ±10 %, the same factor for all channels (so greyscale images
/// stay grey).
pub fn colour_jitter(patch: &mut RgbImage, rng: &mut StdRng) {
    let b = rng.random_range(0.9f32..1.1);
    let c = rng.random_range(0.9f32..1.1);
    let n = patch.as_raw().len().max(1) as f32;
    let mean = patch.as_raw().iter().map(|&v| v as f32).sum::<f32>() / n;
    for v in patch.iter_mut() {
        *v = (((*v as f32 - mean) * c + mean) * b)
            .round()
            .clamp(0.0, 255.0) as u8;
    }
}

/// Width and height of a rectangle covering `area` of a `size`² image with aspect ratio w/h.
fn rect_dims(size: u32, area: f32, aspect: f32) -> (u32, u32) {
    let a = area * (size * size) as f32;
    let w = (a * aspect).sqrt().round() as u32;
    let h = (a / aspect).sqrt().round() as u32;
    (w.clamp(1, size), h.clamp(1, size))
}

fn cut_rect(img: &RgbImage, rng: &mut StdRng) -> AnomalyPair {
    let size = img.width();
    let area = rng.random_range(0.02f32..0.15);
    let aspect = rng.random_range(0.3f32.ln()..3.3f32.ln()).exp();
    let (w, h) = rect_dims(size, area, aspect);
    let (sx, sy) = (
        rng.random_range(0..=size - w),
        rng.random_range(0..=size - h),
    );
    let mut patch = imageops::crop_imm(img, sx, sy, w, h).to_image();
    colour_jitter(&mut patch, rng);
    // Another location: redraw a few times if the target equals the source.
    let mut t = (sx, sy);
    for _ in 0..16 {
        t = (
            rng.random_range(0..=size - w),
            rng.random_range(0..=size - h),
        );
        if t != (sx, sy) {
            break;
        }
    }
    let mut image = img.clone();
    imageops::replace(&mut image, &patch, t.0 as i64, t.1 as i64);
    let mut mask = GrayImage::new(size, size);
    for y in t.1..t.1 + h {
        for x in t.0..t.0 + w {
            mask.put_pixel(x, y, Luma([255]));
        }
    }
    AnomalyPair { image, mask }
}

fn cut_scar(img: &RgbImage, rng: &mut StdRng) -> AnomalyPair {
    let size = img.width();
    let s = size as f32 / 256.0;
    let w = ((rng.random_range(2.0f32..=16.0) * s).round() as u32).clamp(1, size);
    let h = ((rng.random_range(10.0f32..=25.0) * s).round() as u32).clamp(2.min(size), size);
    let (sx, sy) = (
        rng.random_range(0..=size - w),
        rng.random_range(0..=size - h),
    );
    let mut patch = imageops::crop_imm(img, sx, sy, w, h).to_image();
    colour_jitter(&mut patch, rng);
    let angle = rng.random_range(-45.0f32..=45.0).to_radians();
    let (sn, cs) = angle.sin_cos();
    let (wf, hf) = (w as f32, h as f32);
    // Half extents of the rotated strip's bounding box; the centre keeps it inside the image.
    let hx = (wf * cs.abs() + hf * sn.abs()) / 2.0;
    let hy = (wf * sn.abs() + hf * cs.abs()) / 2.0;
    let mut centre = |half: f32| {
        let (lo, hi) = (half, size as f32 - half);
        if lo < hi {
            rng.random_range(lo..=hi)
        } else {
            size as f32 / 2.0
        }
    };
    let cx = centre(hx);
    let cy = centre(hy);
    let mut image = img.clone();
    let mut mask = GrayImage::new(size, size);
    let x0 = (cx - hx - 1.0).floor().max(0.0) as u32;
    let y0 = (cy - hy - 1.0).floor().max(0.0) as u32;
    let x1 = ((cx + hx + 1.0).ceil() as u32).min(size);
    let y1 = ((cy + hy + 1.0).ceil() as u32).min(size);
    for y in y0..y1 {
        for x in x0..x1 {
            // Inverse rotation of the pixel centre into patch coordinates; nearest sample.
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let u = cs * dx + sn * dy + wf / 2.0;
            let v = -sn * dx + cs * dy + hf / 2.0;
            if u >= 0.0 && v >= 0.0 && u < wf && v < hf {
                let p = *patch.get_pixel((u as u32).min(w - 1), (v as u32).min(h - 1));
                image.put_pixel(x, y, p);
                mask.put_pixel(x, y, Luma([255]));
            }
        }
    }
    AnomalyPair { image, mask }
}

impl AnomalySource for CutPaste {
    fn name(&self) -> &str {
        match self.kind {
            CutPasteKind::Rect => "cutpaste",
            CutPasteKind::Scar => "cutpaste-scar",
        }
    }

    fn sample(&mut self, rng: &mut StdRng) -> Result<AnomalyPair> {
        let i = self.ctx.pick_good(self.name(), rng)?;
        let img = &self.ctx.good[i];
        Ok(match self.kind {
            CutPasteKind::Rect => cut_rect(img, rng),
            CutPasteKind::Scar => cut_scar(img, rng),
        })
    }
}
