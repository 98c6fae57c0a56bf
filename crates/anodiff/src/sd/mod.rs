//! The Stable Diffusion backbone: models (CLIP text encoder, VAE, UNet), tokenizer, schedulers,
//! the attention-processor hook, weight loading, the shared denoising loop ([`denoise()`]) and the
//! sampling pipelines built on it.

pub mod attention;
pub mod clip;
pub mod config_file;
pub mod denoise;
pub mod guidance;
pub mod lora;
pub mod model_folder;
pub mod model_params;
pub mod model_source;
pub mod noise;
pub mod pipeline;
pub mod pixel_norm;
pub mod presets;
pub mod resnet;
pub mod scheduler;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use denoise::{denoise, Conditioning, DenoiseOptions, StepHook, StepInput};
