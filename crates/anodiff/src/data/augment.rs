//! Seeded data augmentation shared by every trainer: resize, random crop, horizontal / vertical
//! flips. The same geometric transform is applied to an image and its mask (masks use nearest
//! neighbour so they stay binary), so a defect stays exactly under its mask.

use crate::error::{Error, Result};
use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};

/// What [`Augmenter`] does to each sample; the default is a horizontal flip half of the time.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentOptions {
    /// Resize to (width, height) first (bilinear for images, nearest for masks).
    pub resize: Option<(u32, u32)>,
    /// Then take a random crop of (width, height).
    pub crop: Option<(u32, u32)>,
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// Probability of a vertical flip.
    pub vflip: f64,
}

impl Default for AugmentOptions {
    fn default() -> Self {
        Self {
            resize: None,
            crop: None,
            hflip: 0.5,
            vflip: 0.0,
        }
    }
}

/// The random choices for one sample, drawn once and applied to image and mask alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AugmentParams {
    /// Top-left corner of the crop (in the resized image) and its size.
    pub crop: Option<(u32, u32, u32, u32)>,
    /// Whether to flip left–right.
    pub hflip: bool,
    /// Whether to flip top–bottom.
    pub vflip: bool,
}

/// A seeded stream of augmentations: the n-th call is the same in every run.
pub struct Augmenter {
    opts: AugmentOptions,
    rng: rand::rngs::StdRng,
}

impl Augmenter {
    /// A stream seeded with `seed`.
    pub fn new(opts: AugmentOptions, seed: u64) -> Self {
        Self {
            opts,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// The options this stream applies.
    pub fn options(&self) -> &AugmentOptions {
        &self.opts
    }

    /// Draws the parameters for an input of `width` x `height` (before resizing).
    pub fn draw(&mut self, width: u32, height: u32) -> Result<AugmentParams> {
        let (w, h) = self.opts.resize.unwrap_or((width, height));
        let crop = match self.opts.crop {
            None => None,
            Some((cw, ch)) => {
                if cw == 0 || ch == 0 || cw > w || ch > h {
                    return Err(Error::invalid(format!(
                        "augment: crop {cw}x{ch} does not fit a {w}x{h} image"
                    )));
                }
                let x = self.rng.random_range(0..=w - cw);
                let y = self.rng.random_range(0..=h - ch);
                Some((x, y, cw, ch))
            }
        };
        // Always draw both, so the stream does not depend on which flips are enabled.
        let hflip = self.rng.random::<f64>() < self.opts.hflip;
        let vflip = self.rng.random::<f64>() < self.opts.vflip;
        Ok(AugmentParams { crop, hflip, vflip })
    }

    /// Augments an image and (optionally) its mask with one draw of random parameters.
    pub fn apply(
        &mut self,
        img: &RgbImage,
        mask: Option<&GrayImage>,
    ) -> Result<(RgbImage, Option<GrayImage>)> {
        if let Some(m) = mask {
            if m.dimensions() != img.dimensions() {
                return Err(Error::invalid(format!(
                    "augment: mask is {:?} but image is {:?}",
                    m.dimensions(),
                    img.dimensions()
                )));
            }
        }
        let p = self.draw(img.width(), img.height())?;
        let out = apply_params(img, &self.opts, &p, FilterType::Triangle);
        let out_mask = mask.map(|m| apply_params(m, &self.opts, &p, FilterType::Nearest));
        Ok((out, out_mask))
    }
}

/// Applies fixed parameters to any image type with the given resize filter.
pub fn apply_params<P>(
    img: &image::ImageBuffer<P, Vec<u8>>,
    opts: &AugmentOptions,
    p: &AugmentParams,
    filter: FilterType,
) -> image::ImageBuffer<P, Vec<u8>>
where
    P: image::Pixel<Subpixel = u8> + 'static,
{
    let mut x = match opts.resize {
        Some((w, h)) if (w, h) != img.dimensions() => imageops::resize(img, w, h, filter),
        _ => img.clone(),
    };
    if let Some((cx, cy, cw, ch)) = p.crop {
        x = imageops::crop_imm(&x, cx, cy, cw, ch).to_image();
    }
    if p.hflip {
        imageops::flip_horizontal_in_place(&mut x);
    }
    if p.vflip {
        imageops::flip_vertical_in_place(&mut x);
    }
    x
}
