//! VAE encoder: image `[B, in, H, W]` → moments `[B, 2·latent, H/f, W/f]` (before `quant_conv`).

use super::config::VaeConfig;
use super::mid::VaeMidBlock;
use super::EPS;
use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, Params};
use crate::sd::resnet::{Downsample2D, ResnetBlock2D};
use candle_core::{Module, Tensor};

/// `DownEncoderBlock2D`: resnets, then a stride-2 conv on all blocks but the last.
pub struct DownEncoderBlock {
    /// `layers_per_block` resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// Stride-2 convolution, on every block but the last.
    pub downsample: Option<Downsample2D>,
}

impl DownEncoderBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.downsample {
            Some(d) => d.forward(&h),
            None => Ok(h),
        }
    }
}

/// VAE encoder (see the module doc).
pub struct Encoder {
    /// Image → first level's channels.
    pub conv_in: Conv2d,
    /// Down blocks, highest resolution first.
    pub down_blocks: Vec<DownEncoderBlock>,
    /// Mid block.
    pub mid_block: VaeMidBlock,
    /// Final GroupNorm (followed by SiLU).
    pub conv_norm_out: GroupNorm,
    /// To `2·latent` moment channels.
    pub conv_out: Conv2d,
}

impl Encoder {
    /// Builds the encoder for `cfg` at `p` (`encoder.` scope).
    pub fn new(cfg: &VaeConfig, p: &Params) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let last = *ch.last().expect("validated: non-empty");
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut in_ch = ch[0];
        for (i, &out_ch) in ch.iter().enumerate() {
            let bp = p.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    let c = if j == 0 { in_ch } else { out_ch };
                    ResnetBlock2D::new(&bp.pp(format!("resnets.{j}")), c, out_ch, None, g, EPS)
                })
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < ch.len() {
                // The VAE pads right/bottom only (diffusers `downsample_padding=0`).
                Some(Downsample2D::new(
                    &bp.pp("downsamplers.0"),
                    out_ch,
                    out_ch,
                    true,
                )?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock {
                resnets,
                downsample,
            });
            in_ch = out_ch;
        }
        Ok(Self {
            conv_in: Conv2d::new(&p.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block: VaeMidBlock::new(&p.pp("mid_block"), last, g, cfg.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::new(&p.pp("conv_norm_out"), g, last, EPS)?,
            conv_out: Conv2d::new(&p.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    /// `x: [B, in, H, W]` → moments `[B, 2·latent, H/f, W/f]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            h = b.forward(&h)?;
        }
        let h = self.mid_block.forward(&h)?;
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h)?.silu()?)
    }
}
