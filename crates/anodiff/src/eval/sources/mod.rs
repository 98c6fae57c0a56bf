//! Anomaly sources: where a downstream detector's defective training pairs come from. Each source
//! yields (image, mask) pairs at the training resolution; the localisation trainer mixes them 50/50
//! with defect-free images. `dir:PATH` is the slot for DualAnoDiff's generated pairs.

use crate::data::split::SplitManifest;
use crate::error::Result;
use image::{GrayImage, RgbImage};
use rand::rngs::StdRng;
use std::sync::Arc;

/// One defective training example: `mask` is 0/255, same size as `image`.
#[derive(Debug, Clone)]
pub struct AnomalyPair {
    pub image: RgbImage,
    pub mask: GrayImage,
}

/// What every source may use: the split (real few-shot defects) and the defect-free training
/// images already resized to `size`×`size`.
#[derive(Clone)]
pub struct SourceContext {
    pub split: Arc<SplitManifest>,
    pub good: Arc<Vec<RgbImage>>,
    pub size: u32,
}

pub trait AnomalySource: Send {
    /// The spec string this source was built from (e.g. `cutpaste`, `dir:/path`).
    fn name(&self) -> &str;
    /// Draws one pair at `size`×`size`. All randomness comes from `rng`, so a seeded run is
    /// reproducible.
    fn sample(&mut self, rng: &mut StdRng) -> Result<AnomalyPair>;
}
