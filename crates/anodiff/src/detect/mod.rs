//! AnomalySD (METHODS.md part B): few-shot, multi-class anomaly detection by inpainting. One
//! inpainting model learns the normal appearance of every category; at test time it repaints
//! masked regions of an image as normal, and the difference between input and repainting is the
//! anomaly map. Everything plugs into the backbone through the public pipelines / denoising loop,
//! the Trainer and attention processors; detections are written in the prediction format and
//! scored by `anodiff eval`.
//!
//! - [`prompts`]: hierarchical prompts from a data file (the same in training and inference);
//! - [`masks`]: grid-cell masks of the inference scales and foreground-placed training masks;
//! - [`train`]: the `detect-train` job (one model, all categories, full or LoRA);
//! - [`vae_tune`]: VAE decoder fine-tuning (reconstruction MSE + optional weight-free gradient term);
//! - [`run`]: a trained run folder, loaded for inference;
//! - [`distance`]: weight-free per-pixel distances and the harmonic fusion of scales;
//! - [`features`]: patch features from our own UNet (an attention processor records them);
//! - [`prototypes`]: the shots' patch prototypes and nearest-prototype distances;
//! - [`infer`]: the detector — multi-scale masks, prototype-guided mask, their combination;
//! - [`job`]: detection over a split (prediction format, shot draws, ablations, kNN) or a folder;
//! - [`bench`](mod@bench): `bench detection` — detect + `evaluate` over datasets, shot counts and draws.

pub mod bench;
pub mod distance;
pub mod features;
pub mod infer;
pub mod job;
pub mod masks;
pub mod prompts;
pub mod prototypes;
pub mod run;
pub mod train;
pub mod vae_tune;
