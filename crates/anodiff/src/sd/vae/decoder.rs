//! VAE decoder: latent `[B, latent, h, w]` (after `post_quant_conv`) → image `[B, out, h·f, w·f]`.

use super::config::VaeConfig;
use super::mid::VaeMidBlock;
use super::EPS;
use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, Params};
use crate::sd::resnet::{ResnetBlock2D, Upsample2D};
use candle_core::{Module, Tensor};

/// `UpDecoderBlock2D`: `layers_per_block + 1` resnets, then ×2 nearest upsampling + conv on all
/// blocks but the last.
pub struct UpDecoderBlock {
    /// `layers_per_block + 1` resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// ×2 upsampling, on every block but the last.
    pub upsample: Option<Upsample2D>,
}

impl UpDecoderBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        match &self.upsample {
            Some(u) => u.forward(&h, None),
            None => Ok(h),
        }
    }
}

/// VAE decoder (see the module doc).
pub struct Decoder {
    /// Latent → widest channels.
    pub conv_in: Conv2d,
    /// Mid block.
    pub mid_block: VaeMidBlock,
    /// Up blocks, lowest resolution first.
    pub up_blocks: Vec<UpDecoderBlock>,
    /// Final GroupNorm (followed by SiLU).
    pub conv_norm_out: GroupNorm,
    /// To image channels.
    pub conv_out: Conv2d,
}

impl Decoder {
    /// Builds the decoder for `cfg` at `p` (`decoder.` scope).
    pub fn new(cfg: &VaeConfig, p: &Params) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let top = rev[0];
        let mut up_blocks = Vec::with_capacity(rev.len());
        let mut in_ch = top;
        for (i, &out_ch) in rev.iter().enumerate() {
            let bp = p.pp(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let c = if j == 0 { in_ch } else { out_ch };
                    ResnetBlock2D::new(&bp.pp(format!("resnets.{j}")), c, out_ch, None, g, EPS)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsample = if i + 1 < rev.len() {
                Some(Upsample2D::new(&bp.pp("upsamplers.0"), out_ch, out_ch)?)
            } else {
                None
            };
            up_blocks.push(UpDecoderBlock { resnets, upsample });
            in_ch = out_ch;
        }
        let bottom = *rev.last().expect("validated: non-empty");
        Ok(Self {
            conv_in: Conv2d::new(&p.pp("conv_in"), cfg.latent_channels, top, 3, 1, 1)?,
            mid_block: VaeMidBlock::new(&p.pp("mid_block"), top, g, cfg.mid_block_add_attention)?,
            up_blocks,
            conv_norm_out: GroupNorm::new(&p.pp("conv_norm_out"), g, bottom, EPS)?,
            conv_out: Conv2d::new(&p.pp("conv_out"), bottom, cfg.out_channels, 3, 1, 1)?,
        })
    }

    /// `z: [B, latent, h, w]` → `[B, out, h·f, w·f]`.
    pub fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z)?)?;
        for b in &self.up_blocks {
            h = b.forward(&h)?;
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h)?.silu()?)
    }
}
