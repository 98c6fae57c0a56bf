//! Named model configurations. A preset is plain configuration (UNet, VAE, text encoder,
//! scheduler, native resolution): the real SD shapes for users with real weights, and small shapes
//! of the same architecture for tests, benchmarks and CPU training from scratch.

use super::clip::ClipTextModel;
use super::clip::{ClipActivation, ClipTextConfig};
use super::scheduler::SchedulerConfig;
use super::unet::UNet2DConditionModel;
use super::unet::{PerBlock, UNetConfig};
use super::vae::AutoencoderKL;
use super::vae::{config::SampleSize, VaeConfig};
use crate::error::{Error, Result};
use crate::nn::Params;

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ParameterCounts {
    pub unet: usize,
    pub vae: usize,
    pub text_encoder: usize,
}

#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    /// Native image side in pixels.
    pub resolution: usize,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub text: ClipTextConfig,
    pub scheduler: SchedulerConfig,
}

/// Every preset name, in listing order.
pub const NAMES: &[&str] = &["tiny", "sd15", "sd15-inpaint", "sd2-base"];

impl Preset {
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "tiny" => tiny(),
            "sd15" => sd15(),
            "sd15-inpaint" => Preset {
                name: "sd15-inpaint",
                description: "Stable Diffusion 1.5 inpainting: 9-channel UNet (latents + mask + masked image)",
                unet: UNetConfig::sd15_inpaint(),
                ..sd15()
            },
            "sd2-base" => Preset {
                name: "sd2-base",
                description: "Stable Diffusion 2 base: OpenCLIP-H text tower (1024), linear projections, per-block heads",
                unet: UNetConfig::sd2_base(),
                text: ClipTextConfig::sd2(),
                ..sd15()
            },
            other => {
                return Err(Error::invalid(format!(
                    "unknown preset `{other}` (known: {})",
                    NAMES.join(", ")
                )))
            }
        })
    }

    pub fn all() -> Vec<Self> {
        NAMES
            .iter()
            .map(|n| Self::by_name(n).expect("listed presets exist"))
            .collect()
    }

    /// Parameter counts (UNet, VAE, text encoder), computed without allocating the weights.
    pub fn parameter_counts(&self) -> Result<ParameterCounts> {
        let dev = candle_core::Device::Cpu;
        let count = |build: &dyn Fn(&Params) -> Result<()>| -> Result<usize> {
            let p = Params::shapes_only(&dev);
            build(&p)?;
            Ok(p.parameter_count())
        };
        Ok(ParameterCounts {
            unet: count(&|p| UNet2DConditionModel::new(&self.unet, p).map(|_| ()))?,
            vae: count(&|p| AutoencoderKL::new(&self.vae, p).map(|_| ()))?,
            text_encoder: count(&|p| ClipTextModel::new(&self.text, p).map(|_| ()))?,
        })
    }

    /// Latent side at the native resolution.
    pub fn latent_size(&self) -> usize {
        self.resolution / self.vae.downscale_factor()
    }
}

fn sd15() -> Preset {
    Preset {
        name: "sd15",
        description:
            "Stable Diffusion 1.5: UNet 320/640/1280/1280, VAE 128-512, CLIP ViT-L/14 text",
        resolution: 512,
        unet: UNetConfig::sd15(),
        vae: VaeConfig::sd15(),
        text: ClipTextConfig::sd15(),
        scheduler: SchedulerConfig::default(),
    }
}

/// The smallest model with every SD feature (cross-attention and plain blocks, down/up sampling,
/// VAE attention): fast enough for unit tests and the CI-sized demo.
fn tiny() -> Preset {
    let unet = UNetConfig {
        sample_size: Some(16),
        block_out_channels: vec![32, 64],
        down_block_types: vec!["CrossAttnDownBlock2D".into(), "DownBlock2D".into()],
        up_block_types: vec!["UpBlock2D".into(), "CrossAttnUpBlock2D".into()],
        layers_per_block: PerBlock::One(1),
        norm_num_groups: Some(8),
        cross_attention_dim: PerBlock::One(64),
        attention_head_dim: PerBlock::One(2),
        ..UNetConfig::sd15()
    };
    let vae = VaeConfig {
        block_out_channels: vec![32, 64],
        down_block_types: vec![super::vae::config::DOWN_BLOCK.into(); 2],
        up_block_types: vec![super::vae::config::UP_BLOCK.into(); 2],
        layers_per_block: 1,
        norm_num_groups: 8,
        sample_size: SampleSize::Square(32),
        ..VaeConfig::sd15()
    };
    let text = ClipTextConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        hidden_act: ClipActivation::QuickGelu,
        projection_dim: Some(64),
        ..ClipTextConfig::sd15()
    };
    Preset {
        name: "tiny",
        description:
            "tests and smoke runs: UNet 32/64, VAE 32/64 (2x latent), 2-layer CLIP width 64",
        resolution: 32,
        unet,
        vae,
        text,
        scheduler: SchedulerConfig::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_agree_on_widths() {
        for p in Preset::all() {
            p.unet.validate().unwrap();
            p.vae
                .validate()
                .map_err(|e| format!("{}: {e}", p.name))
                .unwrap();
            p.text
                .validate()
                .map_err(|e| format!("{}: {e}", p.name))
                .unwrap();
            assert_eq!(
                p.text.hidden_size,
                p.unet.cross_attention_dim.get(0),
                "{}",
                p.name
            );
            assert_eq!(p.resolution % p.vae.downscale_factor(), 0, "{}", p.name);
        }
        assert_eq!(Preset::by_name("sd15").unwrap().latent_size(), 64);
        // Published SD-1.5 sizes: UNet 859,520,964; VAE 83,653,863; CLIP text 123,060,480.
        let c = Preset::by_name("sd15").unwrap().parameter_counts().unwrap();
        assert_eq!(
            (c.unet, c.vae, c.text_encoder),
            (859_520_964, 83_653_863, 123_060_480)
        );
        assert!(Preset::by_name("nope")
            .unwrap_err()
            .to_string()
            .contains("tiny"));
    }
}
