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

/// Parameter counts of a preset's models.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct ParameterCounts {
    /// UNet parameters.
    pub unet: usize,
    /// VAE parameters.
    pub vae: usize,
    /// Text-encoder parameters.
    pub text_encoder: usize,
}

/// A named model configuration; see [`NAMES`].
#[derive(Clone, Debug)]
pub struct Preset {
    /// Its name in [`NAMES`].
    pub name: &'static str,
    /// One-line description for listings.
    pub description: &'static str,
    /// Native image side in pixels.
    pub resolution: usize,
    /// UNet config.
    pub unet: UNetConfig,
    /// VAE config (unused when `pixel_space`).
    pub vae: VaeConfig,
    /// Text-encoder config.
    pub text: ClipTextConfig,
    /// Noise-schedule config.
    pub scheduler: SchedulerConfig,
    /// The UNet denoises RGB pixels directly (3 channels, no VAE; `vae` is unused). The notes on
    /// the `small` preset in `sd/presets.rs` say why CPU-trained presets work in pixel space.
    pub pixel_space: bool,
}

/// The models of a preset, numbered for the seeds of their fresh weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The CLIP text encoder.
    TextEncoder = 1,
    /// The VAE.
    Vae = 2,
    /// The UNet.
    Unet = 3,
}

/// Fresh random parameters for one model of a preset. One seed per component, so changing one
/// model's shape leaves the others' weights alone; the same `seed` gives the weights of
/// `StableDiffusion::from_preset`.
pub fn fresh_params(seed: u64, component: Component, device: &candle_core::Device) -> Params {
    Params::fresh(
        seed.wrapping_mul(0x9E37_79B9)
            .wrapping_add(component as u64),
        device,
    )
}

/// Every preset name, in listing order.
pub const NAMES: &[&str] = &[
    "tiny",
    "tiny-pixel",
    "small",
    "small64",
    "small64-attn32",
    "sd15",
    "sd15-inpaint",
    "sd2-base",
    "small-inpaint",
    "small64-inpaint",
];

impl Preset {
    /// The preset called `name`; an unknown name is an error listing the known ones.
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "tiny" => tiny(),
            "tiny-pixel" => tiny_pixel(),
            "small" => small(),
            "small64" => small64(),
            "small64-attn32" => small64_attn32(),
            "small-inpaint" => inpainting(small(), "small-inpaint", "AnomalySD at CPU scale, 32 px: `small` with a 7-channel input [x_t; mask; masked image]"),
            "small64-inpaint" => inpainting(small64(), "small64-inpaint", "AnomalySD at CPU scale, 64 px: `small64` with a 7-channel input [x_t; mask; masked image]"),
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

    /// Every preset, in [`NAMES`] order.
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
        let vae = if self.pixel_space {
            0
        } else {
            count(&|p| AutoencoderKL::new(&self.vae, p).map(|_| ()))?
        };
        Ok(ParameterCounts {
            unet: count(&|p| UNet2DConditionModel::new(&self.unet, p).map(|_| ()))?,
            vae,
            text_encoder: count(&|p| ClipTextModel::new(&self.text, p).map(|_| ()))?,
        })
    }

    /// Latent side at the native resolution.
    pub fn latent_size(&self) -> usize {
        self.resolution / self.downscale_factor()
    }

    /// Image side / UNet sample side: the VAE's factor, 1 in pixel space.
    pub fn downscale_factor(&self) -> usize {
        if self.pixel_space {
            1
        } else {
            self.vae.downscale_factor()
        }
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
        pixel_space: false,
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
        pixel_space: false,
    }
}

/// DDPM's linear betas (1e-4..0.02: almost no signal left at t = 999, which pixel-space models
/// need) with x0 clipping to the image range, as pixel-space DDPM/DDIM use. v-prediction: with
/// ε-prediction the x0 estimate at high t divides the ε error by √ᾱ_t (≈ 0.006 at t = 999); v
/// keeps it bounded. On the demo the samples' tints then followed the data.
fn pixel_schedule() -> SchedulerConfig {
    SchedulerConfig {
        beta_start: 1e-4,
        beta_end: 0.02,
        beta_schedule: super::scheduler::BetaSchedule::Linear,
        clip_sample: true,
        prediction_type: super::scheduler::PredictionType::VPrediction,
        ..SchedulerConfig::default()
    }
}

/// `tiny`'s UNet and text encoder denoising 3-channel pixels at 32 px: the fastest preset that
/// can be trained from scratch and sampled without a VAE (tests, quick demos).
fn tiny_pixel() -> Preset {
    let t = tiny();
    Preset {
        name: "tiny-pixel",
        description: "pixel space, 32 px: tiny's UNet 32/64 on RGB, 2-layer CLIP width 64",
        resolution: 32,
        unet: UNetConfig {
            sample_size: Some(32),
            in_channels: 3,
            out_channels: 3,
            ..t.unet
        },
        scheduler: pixel_schedule(),
        pixel_space: true,
        ..t
    }
}

/// The CPU pretraining preset: pixel space at 32 px, UNet 32/64/64 (attention in the two lower
/// resolution blocks), 2-layer CLIP width 64 with the built-in vocabulary.
///
/// Why pixel space: a model trained from scratch cannot use an untrained VAE (a random
/// encoder/decoder pair is not invertible), so latent space would first need a VAE trained on the
/// same images: a second training run with its own budget, and its reconstruction blur on top of
/// the UNet's error. Measured on the 2 shared AVX2 cores: one `small` training update (batch 8,
/// 32 px, UNet + text encoder forward/backward, AdamW) takes about 1.0 s; `tiny-pixel` at batch 4
/// about 0.8 s (with another test running). `tiny`'s VAE has the UNet's widths (32/64) and runs
/// its encoder and decoder at the full 32 px, so training it would cost about as much per step as
/// the pixel UNet, while its 2x latent only saves a factor 4 of UNet work that is already small at
/// 32 px. At 64 px and above a small 4-8x VAE becomes the better trade, as in SD.
fn small() -> Preset {
    let t = tiny();
    let unet = UNetConfig {
        sample_size: Some(32),
        in_channels: 3,
        out_channels: 3,
        block_out_channels: vec![32, 64, 64],
        down_block_types: vec![
            "DownBlock2D".into(),
            "CrossAttnDownBlock2D".into(),
            "CrossAttnDownBlock2D".into(),
        ],
        up_block_types: vec![
            "CrossAttnUpBlock2D".into(),
            "CrossAttnUpBlock2D".into(),
            "UpBlock2D".into(),
        ],
        layers_per_block: PerBlock::One(1),
        norm_num_groups: Some(8),
        cross_attention_dim: PerBlock::One(64),
        attention_head_dim: PerBlock::One(2),
        ..UNetConfig::sd15()
    };
    Preset {
        name: "small",
        description:
            "CPU pretraining from scratch: pixel space 32 px, UNet 32/64/64, 2-layer CLIP width 64",
        resolution: 32,
        unet,
        scheduler: pixel_schedule(),
        pixel_space: true,
        ..t
    }
}

/// `small`'s family at 64 px, the resolution of the CPU localisation benchmark: one more level
/// in front (UNet 16/32/64/64) so the 64×64 and 32×32 levels stay cheap, attention only at 16×16
/// and 8×8 (256 and 64 tokens). Pixel space for the reasons given at [`small`].
fn small64() -> Preset {
    let s = small();
    let unet = UNetConfig {
        sample_size: Some(64),
        block_out_channels: vec![16, 32, 64, 64],
        down_block_types: vec![
            "DownBlock2D".into(),
            "DownBlock2D".into(),
            "CrossAttnDownBlock2D".into(),
            "CrossAttnDownBlock2D".into(),
        ],
        up_block_types: vec![
            "CrossAttnUpBlock2D".into(),
            "CrossAttnUpBlock2D".into(),
            "UpBlock2D".into(),
            "UpBlock2D".into(),
        ],
        ..s.unet
    };
    Preset {
        name: "small64",
        description:
            "CPU training from scratch at 64 px: pixel space, UNet 16/32/64/64, 2-layer CLIP width 64",
        resolution: 64,
        unet,
        ..s
    }
}

/// `small64` with attention at 32 px too (three of four levels carry transformer blocks, as in
/// SD-1.5). DualAnoDiff's adapters live in attention layers; in `small64` the finest one is at
/// 16 px, where a 4-px defect is under one token, and the whole-image branch did not learn the
/// defect there (BENCHMARKS.md "DualAnoDiff learning at CPU scale").
fn small64_attn32() -> Preset {
    let s = small64();
    let unet = UNetConfig {
        down_block_types: vec![
            "DownBlock2D".into(),
            "CrossAttnDownBlock2D".into(),
            "CrossAttnDownBlock2D".into(),
            "CrossAttnDownBlock2D".into(),
        ],
        up_block_types: vec![
            "CrossAttnUpBlock2D".into(),
            "CrossAttnUpBlock2D".into(),
            "CrossAttnUpBlock2D".into(),
            "UpBlock2D".into(),
        ],
        ..s.unet
    };
    Preset {
        name: "small64-attn32",
        description: "DualAnoDiff at CPU scale, 64 px: `small64` with attention at 32, 16 and 8 px (three of four levels, as SD-1.5)",
        unet,
        ..s
    }
}

/// The inpainting form of a pixel-space preset, as SD-inpainting is of SD: the UNet takes the
/// noisy sample, the mask and the masked image (3 + 1 + 3 = 7 channels in pixel space, diffusers'
/// order) and predicts the noise of the 3 sample channels. Everything else is unchanged.
fn inpainting(base: Preset, name: &'static str, description: &'static str) -> Preset {
    let unet = UNetConfig {
        in_channels: 2 * base.unet.out_channels + 1,
        ..base.unet
    };
    Preset {
        name,
        description,
        unet,
        ..base
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
            assert_eq!(p.resolution % p.downscale_factor(), 0, "{}", p.name);
            if p.pixel_space {
                // RGB in, or the inpainting form (RGB + mask + masked RGB); RGB out.
                let want_in = if p.name.ends_with("-inpaint") { 7 } else { 3 };
                assert_eq!(
                    (p.unet.in_channels, p.unet.out_channels),
                    (want_in, 3),
                    "{}",
                    p.name
                );
                assert_eq!(p.unet.sample_size, Some(p.resolution), "{}", p.name);
            }
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
