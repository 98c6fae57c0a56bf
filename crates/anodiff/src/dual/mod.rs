//! DualAnoDiff: few-shot generation of defect images with pixel-aligned masks (METHODS.md part A).
//! One UNet learns two branches side by side — the whole defect image and the defect alone on
//! grey — so every generated image comes with a matching anomaly part, from which the mask is
//! read off.
//!
//! - [`pairs`]: the training data — real defects of one type, their masks and foreground masks,
//!   augmented into whole / part / mask / background tensors;
//! - [`mask`]: masks from generated part images, and automatic rejection of failed pairs.

pub mod mask;
pub mod pairs;
