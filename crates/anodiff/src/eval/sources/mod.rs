//! Anomaly sources: where a downstream detector's defective training pairs come from. Each source
//! yields (image, mask) pairs at the training resolution; the localisation trainer mixes them 50/50
//! with defect-free images. `dir:PATH` is the slot for DualAnoDiff's generated pairs.

pub mod cutpaste;
pub mod dir;
pub mod draem;
pub mod fewshot;
pub mod mix;
pub mod perlin;
pub mod spec;

pub use spec::{from_spec, preview_grid, SOURCE_SPECS};

use crate::data::split::SplitManifest;
use crate::error::{Error, Result};
use image::{GrayImage, RgbImage};
use rand::rngs::StdRng;
use rand::Rng;
use std::sync::Arc;

/// One defective training example: `mask` is 0/255, same size as `image`.
#[derive(Debug, Clone)]
pub struct AnomalyPair {
    /// The defective image.
    pub image: RgbImage,
    /// Its defect mask.
    pub mask: GrayImage,
}

/// What every source may use: the split (real few-shot defects) and the defect-free training
/// images already resized to `size`×`size`.
#[derive(Clone)]
pub struct SourceContext {
    /// The few-shot split.
    pub split: Arc<SplitManifest>,
    /// Defect-free training images at `size`×`size`.
    pub good: Arc<Vec<RgbImage>>,
    /// Training side in pixels.
    pub size: u32,
}

/// A generator of defective (image, mask) pairs for the localisation trainer.
pub trait AnomalySource: Send {
    /// The spec string this source was built from (e.g. `cutpaste`, `dir:/path`).
    fn name(&self) -> &str;
    /// Draws one pair at `size`×`size`. All randomness comes from `rng`, so a seeded run is
    /// reproducible.
    fn sample(&mut self, rng: &mut StdRng) -> Result<AnomalyPair>;
}

impl SourceContext {
    /// Index of a uniformly drawn good image, checking that there is one of the right size.
    pub(crate) fn pick_good(&self, source: &str, rng: &mut StdRng) -> Result<usize> {
        if self.good.is_empty() {
            return Err(Error::invalid(format!(
                "anomaly source `{source}` needs defect-free images, but the context has none"
            )));
        }
        let i = rng.random_range(0..self.good.len());
        let d = self.good[i].dimensions();
        if d != (self.size, self.size) {
            return Err(Error::invalid(format!(
                "anomaly source `{source}`: good image {i} is {}x{}, expected {s}x{s}",
                d.0,
                d.1,
                s = self.size
            )));
        }
        Ok(i)
    }
}
