//! Applying a LoRA file to a model for sampling: its UNet part leniently (entries for layers this
//! LoRA cannot adapt, as kohya files often have, are reported instead of refused) and its
//! text-encoder part when the file has one.

use super::install::Lora;
use crate::error::Result;
use crate::sd::attention::HasAttention;
use crate::sd::clip::ClipTextModel;
use std::path::Path;

/// What [`apply_file`] installed.
pub struct AppliedLora {
    /// The UNet part, installed.
    pub unet: Lora,
    /// `None` when the file has no usable text-encoder part.
    pub text_encoder: Option<Lora>,
    /// Keys of the UNet part that target layers anodiff cannot adapt yet (skipped).
    pub skipped: Vec<String>,
}

/// Reads a LoRA file (diffusers/peft or kohya names) and installs it into `unet` and, if the file
/// has that part, into `text_encoder`. A file without a usable UNet part is an error.
pub fn apply_file(
    unet: &dyn HasAttention,
    text_encoder: &ClipTextModel,
    path: &Path,
) -> Result<AppliedLora> {
    let (unet_lora, skipped) = Lora::read_unet_lenient(unet, path)?;
    unet_lora.install_unet(unet);
    // The text-encoder part is optional, so failing to read one only means there is none to use.
    let te_lora = Lora::read_clip_lenient(text_encoder, path)
        .ok()
        .map(|(l, _)| {
            l.install_clip(text_encoder);
            l
        });
    Ok(AppliedLora {
        unet: unet_lora,
        text_encoder: te_lora,
        skipped,
    })
}
