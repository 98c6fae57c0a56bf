//! The generic training engine: AdamW over a named list of `Var`s, a user-supplied loss closure,
//! gradient accumulation and clipping, learning-rate schedules, seeded resumable data order,
//! atomic checkpoints with exact resume, NaN/Inf stop and a JSON-lines log. Nothing here knows
//! about LoRA or any model: a fine-tune collects its trainable `Var`s (e.g. `Params::vars()`),
//! writes a loss closure (e.g. with [`diffusion::DiffusionLoss`]) and calls [`Trainer::run`]
//! (or [`Trainer::run_with`] to act after every update, e.g. sample grids).
//!
//! ```no_run
//! // A DreamBooth/LoRA-style fine-tune in outline (`train/lora_finetune.rs` is the full job):
//! // the base model's weights are frozen tensors, the LoRA's named `Var`s are what is trained.
//! use anodiff::data::folder::ImageFolder;
//! use anodiff::sd::attention::ForwardCtx;
//! use anodiff::sd::lora::{Lora, LoraConfig};
//! use anodiff::sd::pipeline::StableDiffusion;
//! use anodiff::train::{DiffusionLoss, TrainConfig, Trainer};
//! use candle_core::{Device, Tensor};
//! use std::path::Path;
//!
//! # fn main() -> anodiff::Result<()> {
//! let dev = Device::Cpu;
//! let sd = StableDiffusion::load(Path::new("models/sd15"), &dev)?;
//! // Clean samples in the space the UNet denoises, computed once: the VAE posterior mean times
//! // its scaling factor, or the (normalised) pixels of a pixel-space model (`sd.vae` is None).
//! let data = ImageFolder::open(Path::new("images"), 512)?;
//! let x0s = data
//!     .preload(&dev)?
//!     .iter()
//!     .map(|x| sd.encode_mean(x))
//!     .collect::<anodiff::Result<Vec<Tensor>>>()?;
//! let text = sd.encode_text(&["a photo of sks metal"])?; // [1, 77, D], frozen
//! let lora = Lora::attach_unet(&sd.unet, &LoraConfig::unet(4))?;
//! lora.set_training(true);
//! let dl = DiffusionLoss::new(&sd.scheduler_config)?;
//! let cfg = TrainConfig {
//!     steps: 400,
//!     out_dir: Some("runs/lora".into()),
//!     ..TrainConfig::default()
//! };
//! let resume: Option<&Path> = None; // or a `checkpoints/step-N` folder of an earlier run
//! let mut tr = Trainer::new(cfg, lora.vars(), x0s.len())?
//!     .with_metadata(serde_json::json!({"rank": 4}));
//! if let Some(dir) = resume {
//!     tr.resume(dir)?;
//! }
//! tr.on_progress(|s| println!("step {} loss {:.4}", s.step, s.loss));
//! tr.run(|b| {
//!     let x0 = Tensor::cat(&b.indices.iter().map(|&i| &x0s[i]).collect::<Vec<_>>(), 0)?;
//!     let (eps, t) = dl.draw(&x0, &mut b.rng())?;
//!     let txt = text.repeat((x0.dim(0)?, 1, 1))?;
//!     dl.loss(&sd.unet, &x0, &txt, &eps, &t, &ForwardCtx::default())
//! })?;
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
pub mod diffusion;
pub mod grads;
pub mod log;
pub mod lora_finetune;
pub mod optim;
pub mod order;
pub mod pretrain;
pub mod pretrain_eval;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointState};
pub use diffusion::DiffusionLoss;
pub use grads::Grads;
pub use log::{peak_rss_bytes, JsonLog};
pub use optim::{AdamW, AdamWConfig};
pub use order::{stream_seed, DataOrder};
pub use schedule::LrSchedule;
pub use trainer::{micro_batch_size, Batch, StepStats, TrainConfig, Trainer};
