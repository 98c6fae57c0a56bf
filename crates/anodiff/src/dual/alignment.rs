//! Do generated masks sit on the generated defects? A reference-free measure.
//!
//! A defect is a local change of appearance, so an image seen through a well-placed mask shows a
//! contrast between the pixels under the mask and a thin ring just outside it. For each pair:
//! `contrast = ‖mean(I | M) − mean(I | ring(M))‖` (RGB, 0–255), ring = `M` dilated by 2 px minus
//! `M`. The control moves the same mask to a random other place of the same image (circular
//! shift, seeded): a mask that does not follow the defect sees about the control's contrast. The
//! ratio `aligned / shifted` is ≈ 1 for masks unrelated to the image and grows with alignment;
//! real defect pairs give the scale to compare against.

use crate::data::mask_ops::BinaryMask;
use crate::error::Result;
use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Ring width in pixels.
pub const RING: usize = 2;

/// Mask–image contrast over a set of pairs.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Alignment {
    /// Pairs with a non-empty mask (others are skipped).
    pub pairs: usize,
    /// Mean contrast through the pairs' own masks.
    pub aligned: f64,
    /// Mean contrast through the same masks moved elsewhere (the control).
    pub shifted: f64,
}

impl Alignment {
    /// `aligned / shifted`.
    pub fn ratio(&self) -> f64 {
        self.aligned / self.shifted.max(1e-9)
    }
}

/// Contrast between the pixels under `mask` and the ring around it; `None` for an empty mask or
/// one without a ring (covering the image).
pub fn contrast(image: &RgbImage, mask: &BinaryMask) -> Option<f64> {
    let grown = mask.dilated(RING);
    let ring = BinaryMask {
        data: grown
            .data
            .iter()
            .zip(&mask.data)
            .map(|(&g, &m)| g && !m)
            .collect(),
        ..grown.clone()
    };
    let mean = |m: &BinaryMask| -> Option<[f64; 3]> {
        let mut s = [0f64; 3];
        let mut n = 0usize;
        for (i, p) in image.pixels().enumerate() {
            if m.data[i] {
                for c in 0..3 {
                    s[c] += p[c] as f64;
                }
                n += 1;
            }
        }
        (n > 0).then(|| s.map(|v| v / n as f64))
    };
    let (a, b) = (mean(mask)?, mean(&ring)?);
    Some(((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt())
}

/// The mask circularly shifted by a random offset of at least a quarter of the image side.
pub fn shifted(mask: &BinaryMask, rng: &mut impl Rng) -> BinaryMask {
    let (w, h) = (mask.width, mask.height);
    let off = |n: usize, rng: &mut dyn rand::RngCore| -> usize {
        let lo = (n / 4).max(1);
        let hi = (n - lo).max(lo + 1);
        rng.random_range(lo..hi)
    };
    let (dx, dy) = (off(w, rng), off(h, rng));
    let mut data = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            data[y * w + x] = mask.data[((y + h - dy) % h) * w + (x + w - dx) % w];
        }
    }
    BinaryMask {
        width: w,
        height: h,
        data,
    }
}

/// Alignment over `pairs` (image, mask 0/255), the control seeded by `seed`.
pub fn alignment(pairs: &[(RgbImage, GrayImage)], seed: u64) -> Result<Alignment> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut a, mut s, mut n) = (0.0, 0.0, 0usize);
    for (img, m) in pairs {
        let mask = BinaryMask::from_gray(m, 128);
        let (Some(ca), Some(cs)) = (
            contrast(img, &mask),
            contrast(img, &shifted(&mask, &mut rng)),
        ) else {
            continue;
        };
        a += ca;
        s += cs;
        n += 1;
    }
    let d = n.max(1) as f64;
    Ok(Alignment {
        pairs: n,
        aligned: a / d,
        shifted: s / d,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_on_the_spot_sees_it_and_a_moved_one_does_not() {
        let mut img = RgbImage::from_pixel(32, 32, image::Rgb([120, 120, 120]));
        let mut m = GrayImage::new(32, 32);
        for y in 10..14 {
            for x in 5..9 {
                img.put_pixel(x, y, image::Rgb([20, 20, 20]));
                m.put_pixel(x, y, image::Luma([255]));
            }
        }
        let a = alignment(&[(img.clone(), m.clone())], 1).unwrap();
        assert_eq!(a.pairs, 1);
        assert!((a.aligned - (100f64 * 3f64.sqrt())).abs() < 1e-9, "{a:?}");
        assert!(a.shifted < 1e-9, "{a:?}");
        // A mask next to the spot (not on it) is not aligned.
        let mut off = GrayImage::new(32, 32);
        for y in 20..24 {
            for x in 20..24 {
                off.put_pixel(x, y, image::Luma([255]));
            }
        }
        let b = alignment(&[(img, off)], 1).unwrap();
        assert!(b.aligned < 1e-9);
    }
}
