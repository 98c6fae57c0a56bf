//! The generic training engine: AdamW over a named list of `Var`s, a user-supplied loss closure,
//! gradient accumulation and clipping, learning-rate schedules, seeded resumable data order,
//! atomic checkpoints with exact resume, NaN/Inf stop and a JSON-lines log. Nothing here knows
//! about LoRA or any model: a fine-tune collects its trainable `Var`s (e.g. `Params::vars()`),
//! writes a loss closure (e.g. with [`diffusion::DiffusionLoss`]) and calls [`Trainer::run`].

pub mod checkpoint;
pub mod diffusion;
pub mod grads;
pub mod log;
pub mod lora_finetune;
pub mod optim;
pub mod order;
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
