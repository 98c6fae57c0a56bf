//! DRAEM (Zavrtanik et al., ICCV 2021) simulated anomalies: a thresholded Perlin-noise mask inside
//! which a defect-free image is blended with a foreign texture, `β·image + (1−β)·texture`,
//! β ~ U[0, 0.8). DRAEM takes textures from DTD; anodiff has no DTD, so the texture is another
//! defect-free image of the dataset, tile-shuffled or randomly cropped, then put through 3 distinct
//! colour augmentations drawn from DRAEM's kind of list.
//!
//! Empty masks: DRAEM returns the good image with an empty mask when the noise threshold leaves
//! nothing (and, separately, for half of its samples). Here the localisation trainer already mixes
//! in 50 % good images, so an empty mask is **resampled** (new noise, up to 64 tries); only if
//! every try is empty is the good image returned with an empty mask.

use super::perlin::perlin_mask;
use super::{AnomalyPair, AnomalySource, SourceContext};
use crate::error::{Error, Result};
use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// Noise redraws before giving up on a non-empty mask.
const MASK_TRIES: usize = 64;

/// The `draem` source (see the module doc).
pub struct Draem {
    ctx: SourceContext,
}

impl Draem {
    /// A source blending textures into the context's good images.
    pub fn new(ctx: &SourceContext) -> Self {
        Self { ctx: ctx.clone() }
    }
}

/// The colour augmentations the texture may get (3 distinct ones per sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextureAug {
    /// Power curve with γ in [0.5, 2).
    Gamma,
    /// Scale in [0.8, 1.2) and offset in [-30, 30).
    Brightness,
    /// Invert values at or above a threshold in [32, 128].
    Solarize,
    /// Keep the top 1–4 bits.
    Posterize,
    /// 255 − v.
    Invert,
    /// Stretch each channel to [0, 255].
    Autocontrast,
    /// Histogram-equalise each channel.
    Equalize,
}

/// Every texture augmentation, in a fixed order for seeded draws.
pub const TEXTURE_AUGS: [TextureAug; 7] = [
    TextureAug::Gamma,
    TextureAug::Brightness,
    TextureAug::Solarize,
    TextureAug::Posterize,
    TextureAug::Invert,
    TextureAug::Autocontrast,
    TextureAug::Equalize,
];

/// Applies one augmentation in place; per-value lookup tables, channel-independent except where the
/// statistics are per channel (autocontrast, equalize).
pub fn apply_texture_aug(img: &mut RgbImage, aug: TextureAug, rng: &mut StdRng) {
    let lut: Vec<[u8; 256]> = match aug {
        TextureAug::Gamma => {
            let g = rng.random_range(0.5f32..2.0);
            vec![table(|v| 255.0 * (v / 255.0).powf(g))]
        }
        TextureAug::Brightness => {
            let m = rng.random_range(0.8f32..1.2);
            let a = rng.random_range(-30.0f32..30.0);
            vec![table(|v| v * m + a)]
        }
        TextureAug::Solarize => {
            let t = rng.random_range(32.0f32..=128.0);
            vec![table(|v| if v >= t { 255.0 - v } else { v })]
        }
        TextureAug::Posterize => {
            let bits = rng.random_range(1..=4u32);
            let keep = (0xffu32 << (8 - bits)) as u8;
            vec![table(|v| (v as u8 & keep) as f32)]
        }
        TextureAug::Invert => vec![table(|v| 255.0 - v)],
        TextureAug::Autocontrast => (0..3)
            .map(|c| {
                let vals = img.pixels().map(|p| p[c]);
                let (lo, hi) = vals.fold((255u8, 0u8), |(l, h), v| (l.min(v), h.max(v)));
                if hi <= lo {
                    table(|v| v)
                } else {
                    let k = 255.0 / (hi - lo) as f32;
                    table(|v| (v - lo as f32) * k)
                }
            })
            .collect(),
        TextureAug::Equalize => (0..3)
            .map(|c| {
                let mut hist = [0u32; 256];
                for p in img.pixels() {
                    hist[p[c] as usize] += 1;
                }
                let n = (img.width() * img.height()).max(1) as f32;
                let mut cdf = [0f32; 256];
                let mut acc = 0u32;
                for (i, h) in hist.iter().enumerate() {
                    acc += h;
                    cdf[i] = acc as f32 / n;
                }
                table(|v| 255.0 * cdf[v as usize])
            })
            .collect(),
    };
    for p in img.pixels_mut() {
        for c in 0..3 {
            p[c] = lut[c.min(lut.len() - 1)][p[c] as usize];
        }
    }
}

fn table(f: impl Fn(f32) -> f32) -> [u8; 256] {
    let mut t = [0u8; 256];
    for (i, v) in t.iter_mut().enumerate() {
        *v = f(i as f32).round().clamp(0.0, 255.0) as u8;
    }
    t
}

/// The foreign texture: `src` either cut into k×k tiles (k ∈ {2, 4, 8}) that are shuffled, or a
/// random square crop (30–100 % of the side) resized back; then 3 distinct colour augmentations.
pub fn make_texture(src: &RgbImage, rng: &mut StdRng) -> RgbImage {
    let size = src.width();
    let mut tex = if rng.random_bool(0.5) {
        let k = 1u32 << rng.random_range(1..=3u32);
        let t = (size / k).max(1);
        let k = size / t;
        let mut order: Vec<u32> = (0..k * k).collect();
        order.shuffle(rng);
        let mut out = src.clone();
        for (dst, &from) in order.iter().enumerate() {
            let (fx, fy) = ((from % k) * t, (from / k) * t);
            let (dx, dy) = ((dst as u32 % k) * t, (dst as u32 / k) * t);
            let tile = imageops::crop_imm(src, fx, fy, t, t).to_image();
            imageops::replace(&mut out, &tile, dx as i64, dy as i64);
        }
        out
    } else {
        let side = ((rng.random_range(0.3f32..=1.0) * size as f32).round() as u32).clamp(1, size);
        let x = rng.random_range(0..=size - side);
        let y = rng.random_range(0..=size - side);
        let crop = imageops::crop_imm(src, x, y, side, side).to_image();
        imageops::resize(&crop, size, size, FilterType::Triangle)
    };
    let mut augs = TEXTURE_AUGS.to_vec();
    augs.shuffle(rng);
    for &a in &augs[..3] {
        apply_texture_aug(&mut tex, a, rng);
    }
    tex
}

/// `out = β·img + (1−β)·tex` where `mask` is set, `img` elsewhere.
pub fn blend(img: &RgbImage, tex: &RgbImage, mask: &GrayImage, beta: f32) -> RgbImage {
    let mut out = img.clone();
    for ((o, t), m) in out.pixels_mut().zip(tex.pixels()).zip(mask.pixels()) {
        if m[0] != 0 {
            for c in 0..3 {
                o[c] = (beta * o[c] as f32 + (1.0 - beta) * t[c] as f32)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

impl AnomalySource for Draem {
    fn name(&self) -> &str {
        "draem"
    }

    fn sample(&mut self, rng: &mut StdRng) -> Result<AnomalyPair> {
        let n = self.ctx.good.len();
        let i = self.ctx.pick_good("draem", rng)?;
        // The texture comes from a different image when there is one.
        let j = if n > 1 {
            (i + rng.random_range(1..n)) % n
        } else {
            i
        };
        if self.ctx.good[j].dimensions() != (self.ctx.size, self.ctx.size) {
            return Err(Error::invalid(format!(
                "draem: good image {j} is {:?}, expected {s}x{s}",
                self.ctx.good[j].dimensions(),
                s = self.ctx.size
            )));
        }
        let img = &self.ctx.good[i];
        let tex = make_texture(&self.ctx.good[j], rng);
        let beta = rng.random_range(0.0f32..0.8);
        let size = self.ctx.size;
        for _ in 0..MASK_TRIES {
            let mask = perlin_mask(size, rng);
            if mask.iter().any(|&v| v != 0) {
                return Ok(AnomalyPair {
                    image: blend(img, &tex, &mask, beta),
                    mask,
                });
            }
        }
        Ok(AnomalyPair {
            image: img.clone(),
            mask: GrayImage::new(size, size),
        })
    }
}
