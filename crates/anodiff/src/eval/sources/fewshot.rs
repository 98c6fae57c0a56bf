//! `fewshot-real`: the split's real training defects (all types pooled), augmented. This is the
//! baseline every generator must beat: train the detector on the few real defects alone.

use super::{AnomalyPair, AnomalySource, SourceContext};
use crate::data::augment::{apply_params, AugmentOptions, AugmentParams};
use crate::error::{Error, Result};
use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use rand::rngs::StdRng;
use rand::Rng;
use rayon::prelude::*;

/// The side the images are cached at before the random crop: 1/8 larger than the output.
pub fn cache_side(size: u32) -> u32 {
    (size * 9).div_ceil(8).max(size)
}

/// The `fewshot-real` source: the real training defects, randomly cropped and flipped.
pub struct FewShotReal {
    /// (image, mask) resized to `cache_side(size)` squared.
    pairs: Vec<(RgbImage, GrayImage)>,
    size: u32,
}

impl FewShotReal {
    /// Loads every `defects[*].train` entry of the split. Entries whose mask is empty (an
    /// unannotated defect would teach "no defect here") are skipped with a warning. Fails when no
    /// usable training defect is left.
    pub fn new(ctx: &SourceContext) -> Result<Self> {
        let split = &ctx.split;
        let entries: Vec<_> = split.defects.values().flat_map(|d| &d.train).collect();
        if entries.is_empty() {
            return Err(Error::invalid(format!(
                "fewshot-real: the split of {} has no training defects",
                split.dataset.display()
            )));
        }
        let side = cache_side(ctx.size);
        let loaded: Vec<Option<(RgbImage, GrayImage)>> = entries
            .par_iter()
            .map(|e| -> Result<_> {
                let img = split.load_image(e)?;
                let mask = split.load_mask(e)?;
                if img.dimensions() != mask.dimensions() {
                    return Err(Error::invalid(format!(
                        "fewshot-real: {} is {:?} but its mask is {:?}",
                        split.resolve(&e.image).display(),
                        img.dimensions(),
                        mask.dimensions()
                    )));
                }
                if mask.iter().all(|&v| v == 0) {
                    tracing::warn!(
                        "fewshot-real: skipping {} (empty mask)",
                        split.resolve(&e.image).display()
                    );
                    return Ok(None);
                }
                if img.dimensions() == (side, side) {
                    return Ok(Some((img, mask)));
                }
                let img = imageops::resize(&img, side, side, FilterType::Triangle);
                let mask = imageops::resize(&mask, side, side, FilterType::Nearest);
                Ok(Some((img, mask)))
            })
            .collect::<Result<_>>()?;
        let pairs: Vec<_> = loaded.into_iter().flatten().collect();
        if pairs.is_empty() {
            return Err(Error::invalid(format!(
                "fewshot-real: every training defect of {} has an empty mask",
                split.dataset.display()
            )));
        }
        Ok(Self {
            pairs,
            size: ctx.size,
        })
    }

    /// How many real pairs are pooled.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether no pair was loaded (never true for a constructed source).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

impl AnomalySource for FewShotReal {
    fn name(&self) -> &str {
        "fewshot-real"
    }

    fn sample(&mut self, rng: &mut StdRng) -> Result<AnomalyPair> {
        let (img, mask) = &self.pairs[rng.random_range(0..self.pairs.len())];
        let side = img.width();
        let s = self.size;
        let p = AugmentParams {
            crop: Some((
                rng.random_range(0..=side - s),
                rng.random_range(0..=side - s),
                s,
                s,
            )),
            hflip: rng.random_bool(0.5),
            vflip: rng.random_bool(0.5),
        };
        let opts = AugmentOptions {
            resize: None,
            crop: Some((s, s)),
            hflip: 0.5,
            vflip: 0.5,
        };
        Ok(AnomalyPair {
            image: apply_params(img, &opts, &p, FilterType::Triangle),
            mask: apply_params(mask, &opts, &p, FilterType::Nearest),
        })
    }
}
