//! UNet stages: down blocks (`CrossAttnDownBlock2D` / `DownBlock2D`), the mid block
//! (`UNetMidBlock2DCrossAttn`) and up blocks (`CrossAttnUpBlock2D` / `UpBlock2D`). A block with
//! cross-attention simply has a transformer after each resnet; a plain one has none.

use super::transformer::{AttnSpec, Transformer2DModel};
use crate::error::Result;
use crate::nn::Params;
use crate::sd::attention::{Attention, ForwardCtx};
use crate::sd::resnet::{Downsample2D, ResnetBlock2D, Upsample2D};
use candle_core::{Module, Tensor};

/// Shape facts shared by every block of one UNet.
pub struct BlockCommon {
    /// Width of the time embedding fed to every resnet.
    pub temb_channels: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
    /// Transformers use linear `proj_in`/`proj_out` instead of 1×1 convolutions.
    pub linear_projection: bool,
}

/// Attention settings of one block (None for plain blocks).
pub struct BlockAttn {
    /// Attention heads.
    pub heads: usize,
    /// Width of the text states.
    pub context_dim: usize,
    /// Transformer blocks per transformer.
    pub transformer_layers: usize,
}

fn transformer(
    p: &Params,
    ch: usize,
    a: &BlockAttn,
    c: &BlockCommon,
    next_index: &mut usize,
) -> Result<Transformer2DModel> {
    let spec = AttnSpec {
        heads: a.heads,
        head_dim: ch / a.heads,
        context_dim: a.context_dim,
    };
    Transformer2DModel::new(
        p,
        ch,
        &spec,
        a.transformer_layers,
        c.groups,
        c.linear_projection,
        next_index,
    )
}

/// A down block: (resnet → transformer?)×layers, then an optional stride-2 downsampler.
pub struct DownBlock {
    /// One per layer.
    pub resnets: Vec<ResnetBlock2D>,
    /// One per layer for cross-attention blocks, empty otherwise.
    pub attentions: Vec<Transformer2DModel>,
    /// `None` for the last block.
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// Builds the block at `p`; `next_index` numbers its attention layers in forward order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &Params,
        in_ch: usize,
        out_ch: usize,
        layers: usize,
        attn: Option<&BlockAttn>,
        add_downsample: bool,
        downsample_padding: usize,
        c: &BlockCommon,
        next_index: &mut usize,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for i in 0..layers {
            let inp = if i == 0 { in_ch } else { out_ch };
            let rp = p.pp(format!("resnets.{i}"));
            resnets.push(ResnetBlock2D::new(
                &rp,
                inp,
                out_ch,
                Some(c.temb_channels),
                c.groups,
                c.eps,
            )?);
            if let Some(a) = attn {
                attentions.push(transformer(
                    &p.pp(format!("attentions.{i}")),
                    out_ch,
                    a,
                    c,
                    next_index,
                )?);
            }
        }
        let downsampler = if add_downsample {
            let dp = p.pp("downsamplers.0");
            Some(Downsample2D::new(
                &dp,
                out_ch,
                out_ch,
                downsample_padding == 0,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the block output and the skip tensors it contributes (one per resnet, plus the
    /// downsampled output).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, Some(temb))?;
            if let Some(t) = self.attentions.get(i) {
                h = t.forward(&h, context, ctx)?;
            }
            skips.push(h.clone());
        }
        if let Some(d) = &self.downsampler {
            h = d.forward(&h)?;
            skips.push(h.clone());
        }
        Ok((h, skips))
    }
}

/// resnet → (transformer → resnet)×1; the resnets use `mid_block_scale_factor`.
pub struct MidBlock {
    /// The two resnets.
    pub resnets: Vec<ResnetBlock2D>,
    /// The transformer between them.
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    /// Builds the block at `p`; `next_index` numbers its attention layers in forward order.
    pub fn new(
        p: &Params,
        ch: usize,
        attn: &BlockAttn,
        scale_factor: f64,
        c: &BlockCommon,
        next_index: &mut usize,
    ) -> Result<Self> {
        let resnet = |i: usize| -> Result<ResnetBlock2D> {
            let mut r = ResnetBlock2D::new(
                &p.pp(format!("resnets.{i}")),
                ch,
                ch,
                Some(c.temb_channels),
                c.groups,
                c.eps,
            )?;
            r.output_scale_factor = scale_factor;
            Ok(r)
        };
        let r0 = resnet(0)?;
        let t = transformer(&p.pp("attentions.0"), ch, attn, c, next_index)?;
        let r1 = resnet(1)?;
        Ok(Self {
            resnets: vec![r0, r1],
            attentions: vec![t],
        })
    }

    /// `x: [B, C, h, w]` → `[B, C, h, w]`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, Some(temb))?;
        for (t, r) in self.attentions.iter().zip(&self.resnets[1..]) {
            h = t.forward(&h, context, ctx)?;
            h = r.forward(&h, Some(temb))?;
        }
        Ok(h)
    }
}

/// An up block: (concat skip → resnet → transformer?)×layers, then an optional ×2 upsampler.
pub struct UpBlock {
    /// One per layer.
    pub resnets: Vec<ResnetBlock2D>,
    /// One per layer for cross-attention blocks, empty otherwise.
    pub attentions: Vec<Transformer2DModel>,
    /// `None` for the last block.
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `prev_ch`: channels coming from the previous (deeper) stage; `skip_in_ch`: channels of the
    /// deepest skip this block consumes last (diffusers' `in_channels`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &Params,
        skip_in_ch: usize,
        out_ch: usize,
        prev_ch: usize,
        layers: usize,
        attn: Option<&BlockAttn>,
        add_upsample: bool,
        c: &BlockCommon,
        next_index: &mut usize,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip_ch = if i == layers - 1 { skip_in_ch } else { out_ch };
            let inp = if i == 0 { prev_ch } else { out_ch };
            let rp = p.pp(format!("resnets.{i}"));
            resnets.push(ResnetBlock2D::new(
                &rp,
                inp + skip_ch,
                out_ch,
                Some(c.temb_channels),
                c.groups,
                c.eps,
            )?);
            if let Some(a) = attn {
                attentions.push(transformer(
                    &p.pp(format!("attentions.{i}")),
                    out_ch,
                    a,
                    c,
                    next_index,
                )?);
            }
        }
        let upsampler = if add_upsample {
            Some(Upsample2D::new(&p.pp("upsamplers.0"), out_ch, out_ch)?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// `skips`: this block's skip tensors, consumed from the last; `upsample_to`: spatial size of
    /// the next skip so odd sizes round-trip.
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        context: &Tensor,
        ctx: &ForwardCtx,
        upsample_to: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().ok_or_else(|| {
                crate::Error::invalid("UNet up block ran out of skip connections")
            })?;
            h = Tensor::cat(&[&h, &skip], 1)?;
            h = resnet.forward(&h, Some(temb))?;
            if let Some(t) = self.attentions.get(i) {
                h = t.forward(&h, context, ctx)?;
            }
        }
        if let Some(u) = &self.upsampler {
            h = u.forward(&h, upsample_to)?;
        }
        Ok(h)
    }
}

/// Attention layers of a list of transformers, in forward order.
pub(crate) fn visit(ts: &[Transformer2DModel], f: &mut dyn FnMut(&Attention)) {
    for t in ts {
        t.visit_attention(f);
    }
}
