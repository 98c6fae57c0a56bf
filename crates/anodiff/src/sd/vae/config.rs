//! `vae/config.json` of a diffusers `AutoencoderKL`, read and written ([`ConfigFile`]) with every
//! key diffusers 0.42.1 writes. Missing fields take diffusers' constructor defaults, so a sparse
//! config means the same thing here as in diffusers.

use crate::sd::config_file::{config_json, diffusers_keys, ConfigFile};
use serde::{Deserialize, Serialize};

/// `sample_size` is an int in SD configs but diffusers also accepts `[h, w]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum SampleSize {
    /// One side length.
    Square(usize),
    /// `[height, width]`.
    Rect(Vec<usize>),
}

/// The VAE's `config.json`, field for field (field names are diffusers' keys).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VaeConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// `DownEncoderBlock2D` per level (the only kind).
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    /// `UpDecoderBlock2D` per level (the only kind).
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    /// Channels per level; the downscale factor is 2^(levels − 1).
    #[serde(default = "default_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (decoder blocks have one more).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Activation; only `silu`.
    #[serde(default = "default_act")]
    pub act_fn: String,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// Image size the VAE was trained at.
    #[serde(default = "default_sample_size")]
    pub sample_size: SampleSize,
    /// Latents are multiplied by this after encoding.
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    /// None for SD-1.x/2.x; latents are `(z - shift) * scale` when set.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Only about fp16 inference in diffusers; we compute in f32, so it is read and ignored.
    #[serde(default = "yes")]
    pub force_upcast: bool,
    /// Whether there is a `quant_conv`.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether there is a `post_quant_conv`.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Whether the mid block has its attention layer.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// Per-channel latent statistics that later pipelines (SDXL-era) read; Stable Diffusion 1/2
    /// pipelines ignore them, and so does anodiff (kept so a config saves unchanged).
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// See `latents_mean`.
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
}

fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn yes() -> bool {
    true
}
fn default_down() -> Vec<String> {
    vec![DOWN_BLOCK.to_string()]
}
fn default_up() -> Vec<String> {
    vec![UP_BLOCK.to_string()]
}
fn default_channels() -> Vec<usize> {
    vec![64]
}
fn default_act() -> String {
    "silu".to_string()
}
fn default_groups() -> usize {
    32
}
fn default_sample_size() -> SampleSize {
    SampleSize::Square(32)
}
fn default_scaling() -> f64 {
    0.18215
}

/// The only encoder block type (`down_block_types` entries).
pub const DOWN_BLOCK: &str = "DownEncoderBlock2D";
/// The only decoder block type (`up_block_types` entries).
pub const UP_BLOCK: &str = "UpDecoderBlock2D";

impl VaeConfig {
    /// The VAE of Stable Diffusion 1.x (`runwayml/stable-diffusion-v1-5/vae`); SD-2.x differs only
    /// in `sample_size` (768).
    pub fn sd15() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DOWN_BLOCK.to_string(); 4],
            up_block_types: vec![UP_BLOCK.to_string(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            act_fn: "silu".to_string(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: SampleSize::Square(512),
            scaling_factor: 0.18215,
            shift_factor: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            latents_mean: None,
            latents_std: None,
        }
    }

    /// Image side lengths must be multiples of this (one ×2 downsampling per block but the last).
    pub fn downscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks what the model builder relies on; the message names the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "down_block_types ({}) and up_block_types ({}) must both have one entry per \
                 block_out_channels entry ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != DOWN_BLOCK) {
            return Err(format!(
                "unsupported down block type `{t}` (only {DOWN_BLOCK})"
            ));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != UP_BLOCK) {
            return Err(format!("unsupported up block type `{t}` (only {UP_BLOCK})"));
        }
        // diffusers treats "swish" as another name for SiLU.
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(format!("unsupported act_fn `{}` (only silu)", self.act_fn));
        }
        if self.norm_num_groups == 0 {
            return Err("norm_num_groups is 0".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| **c == 0 || !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(format!(
                "block_out_channels entry {c} is not a positive multiple of norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err("in_channels, out_channels and latent_channels must be positive".into());
        }
        Ok(())
    }
}

impl ConfigFile for VaeConfig {
    const FILE_NAME: &'static str = "config.json";

    fn to_json(&self) -> serde_json::Value {
        config_json(self, &diffusers_keys("AutoencoderKL"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_config_loads_back_equal() {
        let dir = std::env::temp_dir().join(format!("anodiff-vae-cfg-{}", std::process::id()));
        let odd = VaeConfig {
            sample_size: SampleSize::Rect(vec![64, 96]),
            shift_factor: Some(0.0609),
            latents_mean: Some(vec![0.1, -0.2, 0.3, 0.0]),
            use_quant_conv: false,
            ..VaeConfig::sd15()
        };
        for c in [VaeConfig::sd15(), odd] {
            c.save_config(&dir).unwrap();
            assert_eq!(VaeConfig::load_config(&dir).unwrap(), c);
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(v["_class_name"], "AutoencoderKL");
        assert_eq!(v["sample_size"], serde_json::json!([64, 96]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
