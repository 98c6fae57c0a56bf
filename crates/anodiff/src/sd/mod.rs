//! The Stable Diffusion backbone: models (CLIP text encoder, VAE, UNet), tokenizer, schedulers,
//! the attention-processor hook, weight loading and the sampling pipelines.

pub mod attention;
pub mod clip;
pub mod config_file;
pub mod guidance;
pub mod image;
pub mod lora;
pub mod model_folder;
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
