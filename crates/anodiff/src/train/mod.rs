//! The generic training engine: AdamW over a named list of `Var`s, a user-supplied loss closure,
//! gradient accumulation and clipping, learning-rate schedules, seeded resumable data order,
//! atomic checkpoints with exact resume, NaN/Inf stop and a JSON-lines log. Nothing here knows
//! about LoRA or any model: a fine-tune collects its trainable `Var`s (e.g. `Params::vars()`),
//! writes a loss closure (e.g. with [`diffusion::DiffusionLoss`]) and calls [`Trainer::run`].
//!
//! ```ignore
//! // A DreamBooth/LoRA-style fine-tune in outline (`vars`: the adapter's named `Var`s; the base
//! // model built from frozen `Params`, so its weights are plain tensors).
//! let data = ImageFolder::open(&images, 512)?;
//! let latents: Vec<Tensor> = data.preload(&dev)?.iter()       // VAE mode, cached once
//!     .map(|x| Ok(sd.vae.scale_latent(&sd.vae.encode_checked(x)?.mode())?))
//!     .collect::<Result<_>>()?;
//! let text = sd.encode_text(&[prompt])?;                       // [1, 77, D], frozen
//! let dl = DiffusionLoss::new(&sd.scheduler_config)?;
//! let mut tr = Trainer::new(cfg, vars, latents.len())?.with_metadata(json!({"rank": 4}));
//! if let Some(dir) = resume { tr.resume(&dir)?; }
//! tr.on_progress(|s| bar.set(s.step, s.loss, s.lr, s.its_per_sec));
//! tr.run(|b| {
//!     let x0 = Tensor::cat(&b.indices.iter().map(|&i| &latents[i]).collect::<Vec<_>>(), 0)?;
//!     let (eps, t) = dl.draw(&x0, &mut b.rng())?;
//!     dl.loss(&sd.unet, &x0, &text.repeat((x0.dim(0)?, 1, 1))?, &eps, &t, &ForwardCtx::default())
//! })?;
//! ```

pub mod checkpoint;
pub mod diffusion;
pub mod grads;
pub mod log;
pub mod lora_finetune;
pub mod optim;
pub mod order;
pub mod pretrain;
pub mod pretrain_report;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{Checkpoint, CheckpointState};
pub use diffusion::DiffusionLoss;
pub use grads::Grads;
pub use log::{peak_rss_bytes, JsonLog};
pub use optim::{AdamW, AdamWConfig};
pub use order::{stream_seed, DataOrder};
pub use schedule::LrSchedule;
pub use trainer::{Batch, StepStats, TrainConfig, Trainer};
