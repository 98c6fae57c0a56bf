//! DualAnoDiff (METHODS.md part A): few-shot generation of defect images with pixel-aligned
//! masks. One UNet runs two interleaved branches — the whole defect image and the defect alone on
//! grey (its anomaly part) — with a LoRA set each, coupled by SAIM, while BCM feeds the
//! whole-image branch a background reference; every generated image comes with a matching part,
//! from which the mask is read off. Everything plugs into the backbone through attention
//! processors, the public denoising loop and the Trainer.
//!
//! - [`pairs`]: the training data — real defects of one type, their masks and foreground masks,
//!   augmented into whole / part / mask / background tensors;
//! - [`config`]: the model settings (`dual_config.json`);
//! - [`saim`]: the Self-Attention Interaction Module (output-stage processor);
//! - [`bcm`]: the Background Compensation Module (reference pass + `kv_source` processor);
//! - [`model`]: [`model::DualModel`], the LoRA sets + SAIM + BCM of one model, its files and passes;
//! - [`train`]: the two-branch noise-prediction loss on the shared Trainer;
//! - [`sample`]: pairs through the public denoising loop, BCM reference pass in its step hook;
//! - [`mask`]: masks from generated part images, and automatic rejection of failed pairs;
//! - [`run`]: the `dual-train` job (run folder, sample grids, resume);
//! - [`alignment`]: how well generated masks sit on the generated defects (reference-free);
//! - [`generate`]: the `dual-generate` job (references, shards, masks, rejection, manifest);
//! - [`report`]: `report.html` of a run and its generated pairs (grids, rejection, alignment, benchmarks).

pub mod alignment;
pub mod bcm;
pub mod config;
pub mod generate;
pub mod mask;
pub mod model;
pub mod pairs;
pub mod report;
pub mod run;
pub mod saim;
pub mod sample;
pub mod train;

pub use bcm::Fusion;
pub use config::DualConfig;
pub use model::DualModel;
