//! diffusers `AutoencoderKL` as used by Stable Diffusion 1.x/2.x: images in [-1, 1] ↔ latents
//! with `2^(blocks-1)`× smaller sides. Loads a diffusers `vae/` folder with its exact weight names.
//!
//! Latents handed to the UNet are `(z - shift) · scaling_factor`; [`AutoencoderKL::decode`] takes
//! the unscaled `z` (use [`AutoencoderKL::unscale_latent`] first).

mod attention;
pub mod config;
mod decoder;
mod encoder;
mod gaussian;
mod mid;

pub use attention::VaeAttention;
pub use config::{SampleSize, VaeConfig};
pub use decoder::{Decoder, UpDecoderBlock};
pub use encoder::{DownEncoderBlock, Encoder};
pub use gaussian::DiagonalGaussian;
pub use mid::VaeMidBlock;

use crate::error::{Error, Result};
use crate::nn::{Conv2d, Params};
use crate::sd::weights::Component;
use candle_core::{Device, Module, Tensor};

/// GroupNorm epsilon used everywhere in the diffusers VAE.
const EPS: f64 = 1e-6;

/// The SD VAE (`AutoencoderKL`): images ⇄ latents `f` times smaller per side.
pub struct AutoencoderKL {
    /// Image → posterior moments.
    pub encoder: Encoder,
    /// Latents → image.
    pub decoder: Decoder,
    /// 1×1 convolution on the moments, if the config has one.
    pub quant_conv: Option<Conv2d>,
    /// 1×1 convolution on the latents before decoding, if the config has one.
    pub post_quant_conv: Option<Conv2d>,
    cfg: VaeConfig,
}

impl AutoencoderKL {
    /// Builds the model from `p` (weights named as in diffusers: `encoder.…`, `decoder.…`,
    /// `quant_conv`, `post_quant_conv`).
    pub fn new(cfg: &VaeConfig, p: &Params) -> Result<Self> {
        cfg.validate()
            .map_err(|m| Error::invalid(format!("VAE config: {m}")))?;
        let l = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(cfg, &p.pp("encoder"))?,
            decoder: Decoder::new(cfg, &p.pp("decoder"))?,
            quant_conv: if cfg.use_quant_conv {
                Some(Conv2d::new(&p.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(Conv2d::new(&p.pp("post_quant_conv"), l, l, 1, 1, 0)?)
            } else {
                None
            },
            cfg: cfg.clone(),
        })
    }

    /// Loads a diffusers `vae/` folder (config.json + *.safetensors).
    pub fn load(c: &Component, device: &Device) -> Result<Self> {
        let cfg: VaeConfig = c.config()?;
        cfg.validate()
            .map_err(|m| Error::config(c.dir.join("config.json"), m))?;
        Self::new(&cfg, &c.params(device)?)
    }

    /// The config the model was built from.
    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Latents are multiplied by this after encoding (0.18215 for SD-1.x).
    pub fn scaling_factor(&self) -> f64 {
        self.cfg.scaling_factor
    }

    /// 0 when the config has no `shift_factor` (SD-1.x/2.x).
    pub fn shift_factor(&self) -> f64 {
        self.cfg.shift_factor.unwrap_or(0.0)
    }

    /// `z` → the latent the UNet sees: `(z - shift) · scale`.
    pub fn scale_latent(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        (z - self.shift_factor())? * self.scaling_factor()
    }

    /// Inverse of [`Self::scale_latent`], to feed UNet latents to [`Self::decode`].
    pub fn unscale_latent(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        (z / self.scaling_factor())? + self.shift_factor()
    }

    /// Why `x` cannot be encoded, if it cannot: wrong rank or channels, or sides that are not a
    /// multiple of the downscale factor (the asymmetric padding would silently drop a border).
    fn check_image(&self, x: &Tensor) -> std::result::Result<(), String> {
        let dims = x.dims();
        let f = self.cfg.downscale_factor();
        match *dims {
            [_, c, h, w] => {
                if c != self.cfg.in_channels {
                    Err(format!(
                        "VAE encode: image has {c} channels, the model expects {}",
                        self.cfg.in_channels
                    ))
                } else if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
                    Err(format!(
                        "VAE encode: image size {h}x{w} is not a positive multiple of {f} \
                         (2^(number of blocks - 1))"
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Err(format!(
                "VAE encode: expected an image batch [B, C, H, W], got shape {dims:?}"
            )),
        }
    }

    /// `x: [B, in, H, W]` in [-1, 1] → posterior over `[B, latent, H/f, W/f]`. Fails (as a candle
    /// error with a clear message) when H or W is not a multiple of `config().downscale_factor()`.
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<DiagonalGaussian> {
        self.check_image(x).map_err(candle_core::Error::msg)?;
        let h = self.encoder.forward(x)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&h)?,
            None => h,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// [`Self::encode`] with input problems reported as `anodiff::Error::Invalid`.
    pub fn encode_checked(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        self.check_image(x).map_err(Error::invalid)?;
        Ok(self.encode(x)?)
    }

    /// Unscaled latent `z: [B, latent, h, w]` → image `[B, out, h·f, w·f]` (roughly in [-1, 1]).
    pub fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let c = z.dim(1)?;
        if z.rank() != 4 || c != self.cfg.latent_channels {
            candle_core::bail!(
                "VAE decode: expected a latent [B, {}, h, w], got shape {:?}",
                self.cfg.latent_channels,
                z.dims()
            );
        }
        let z = match &self.post_quant_conv {
            Some(q) => q.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let cfg: VaeConfig = serde_json::from_str(r#"{"sample_size": [64, 32]}"#).unwrap();
        assert_eq!(cfg.block_out_channels, vec![64]);
        assert!(cfg.use_quant_conv && cfg.mid_block_add_attention);
        assert_eq!(cfg.sample_size, SampleSize::Rect(vec![64, 32]));
        assert_eq!(VaeConfig::sd15().downscale_factor(), 8);
        assert!(VaeConfig::sd15().validate().is_ok());
        let mut bad = VaeConfig::sd15();
        bad.up_block_types[1] = "AttnUpDecoderBlock2D".into();
        assert!(bad.validate().unwrap_err().contains("AttnUpDecoderBlock2D"));
        let mut bad = VaeConfig::sd15();
        bad.norm_num_groups = 48;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn fresh_model_shapes_and_size_errors() {
        let dev = Device::Cpu;
        let cfg = VaeConfig {
            block_out_channels: vec![8, 16],
            down_block_types: vec![config::DOWN_BLOCK.into(); 2],
            up_block_types: vec![config::UP_BLOCK.into(); 2],
            norm_num_groups: 4,
            mid_block_add_attention: false,
            use_quant_conv: false,
            ..VaeConfig::sd15()
        };
        let p = Params::fresh(1, &dev);
        let vae = AutoencoderKL::new(&cfg, &p).unwrap();
        assert!(!p
            .vars()
            .iter()
            .any(|(n, _)| n.contains("attentions")
                || n.contains("quant_conv.") && !n.contains("post_")));
        let x = Tensor::zeros((1, 3, 8, 12), candle_core::DType::F32, &dev).unwrap();
        let post = vae.encode_checked(&x).unwrap();
        assert_eq!(post.mean.dims(), &[1, 4, 4, 6]);
        assert_eq!(vae.decode(&post.mode()).unwrap().dims(), &[1, 3, 8, 12]);
        let odd = Tensor::zeros((1, 3, 9, 12), candle_core::DType::F32, &dev).unwrap();
        let e = vae.encode_checked(&odd).err().unwrap();
        assert!(
            matches!(e, Error::Invalid(_)) && e.to_string().contains("9x12"),
            "{e}"
        );
        assert!(vae.encode(&odd).is_err());
        let z = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &dev).unwrap();
        assert!(vae.decode(&z).is_err());
    }
}
