//! DualAnoDiff (METHODS.md part A): few-shot generation of defect images with pixel-aligned
//! masks. One UNet runs two interleaved branches — the whole image and its anomaly part — with a
//! LoRA set each, coupled by SAIM, while BCM feeds the whole-image branch a background reference.
//! Everything plugs into the backbone through attention processors, the public denoising loop and
//! the Trainer.
//!
//! - [`config`]: the model settings (`dual_config.json`);
//! - [`saim`]: the Self-Attention Interaction Module (output-stage processor);
//! - [`bcm`]: the Background Compensation Module (reference pass + `kv_source` processor);
//! - [`model`]: [`model::DualModel`], the LoRA sets + SAIM + BCM of one model, its files and passes;
//! - [`sample`]: pairs through the public denoising loop, BCM reference pass in its step hook;
//! - [`train`]: the two-branch noise-prediction loss on the shared Trainer.

pub mod bcm;
pub mod config;
pub mod model;
pub mod saim;
pub mod sample;
pub mod train;

pub use bcm::Fusion;
pub use config::DualConfig;
pub use model::DualModel;
