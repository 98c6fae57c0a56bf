//! diffusers `UNet2DConditionModel` for SD-1.x and SD-2.x configs (txt2img and 9-channel
//! inpainting), loading a diffusers `unet/` folder. Every attention layer is an
//! [`crate::sd::attention::Attention`] named by its diffusers module path, so processors can be
//! installed per layer through [`crate::sd::attention::HasAttention`].

pub mod blocks;
pub mod config;
pub mod embeddings;
pub mod model;
pub mod transformer;

pub use config::{PerBlock, UNetConfig};
pub use embeddings::{timestep_embedding, TimestepEmbedding};
pub use model::UNet2DConditionModel;
pub use transformer::{BasicTransformerBlock, FeedForward, Transformer2DModel};
