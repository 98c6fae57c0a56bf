//! `UNet2DConditionModel`: timestep embedding, conv_in, down path (collecting skips), mid block,
//! up path (consuming skips), GroupNorm → SiLU → conv_out.

use super::blocks::{self, BlockAttn, BlockCommon, DownBlock, MidBlock, UpBlock};
use super::config::{DownKind, UNetConfig, UpKind};
use super::embeddings::{timestep_embedding, TimestepEmbedding};
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, Params};
use crate::sd::attention::{Attention, ForwardCtx, HasAttention};
use crate::sd::weights::Component;
use candle_core::{Device, Module, Tensor};

/// The SD UNet; its attention layers take [`AttnProcessor`](crate::sd::attention::AttnProcessor)s
/// (see [`HasAttention`]).
pub struct UNet2DConditionModel {
    cfg: UNetConfig,
    /// Sinusoid → MLP time embedding.
    pub time_embedding: TimestepEmbedding,
    /// Input convolution.
    pub conv_in: Conv2d,
    /// Down path, highest resolution first.
    pub down_blocks: Vec<DownBlock>,
    /// Mid block, if the config has one.
    pub mid_block: Option<MidBlock>,
    /// Up path, lowest resolution first.
    pub up_blocks: Vec<UpBlock>,
    /// Final GroupNorm (SiLU fused).
    pub conv_norm_out: GroupNorm,
    /// Output convolution.
    pub conv_out: Conv2d,
    /// Context widths the cross-attention layers expect (one per distinct value).
    context_dims: Vec<usize>,
    num_attention_layers: usize,
}

impl UNet2DConditionModel {
    /// Builds the model from `cfg` with weights from `p` (scoped at the component root).
    pub fn new(cfg: &UNetConfig, p: &Params) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.num_blocks();
        let ch = &cfg.block_out_channels;
        let layers = cfg.layers_per_block.expand(n);
        let tlayers = cfg.transformer_layers_per_block.expand(n);
        let cross = cfg.cross_attention_dim.expand(n);
        let (down_kinds, up_kinds) = (cfg.down_kinds()?, cfg.up_kinds()?);
        let temb_dim = cfg.time_embed_dim();
        let common = BlockCommon {
            temb_channels: temb_dim,
            groups: cfg.groups(),
            eps: cfg.norm_eps,
            linear_projection: cfg.use_linear_projection,
        };
        let attn_of = |i: usize| BlockAttn {
            heads: cfg.heads(i),
            context_dim: cross[i],
            transformer_layers: tlayers[i],
        };
        let mut index = 0usize;

        let time_embedding = TimestepEmbedding::new(&p.pp("time_embedding"), ch[0], temb_dim)?;
        let k_in = cfg.conv_in_kernel;
        let conv_in = Conv2d::new(
            &p.pp("conv_in"),
            cfg.in_channels,
            ch[0],
            k_in,
            1,
            (k_in - 1) / 2,
        )?;

        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = ch[0];
        for i in 0..n {
            let in_ch = out_ch;
            out_ch = ch[i];
            let attn = (down_kinds[i] == DownKind::CrossAttn).then(|| attn_of(i));
            down_blocks.push(DownBlock::new(
                &p.pp(format!("down_blocks.{i}")),
                in_ch,
                out_ch,
                layers[i],
                attn.as_ref(),
                i + 1 < n,
                cfg.downsample_padding,
                &common,
                &mut index,
            )?);
        }

        let mid_block = match cfg.mid_block_type {
            Some(_) => Some(MidBlock::new(
                &p.pp("mid_block"),
                ch[n - 1],
                &BlockAttn {
                    heads: cfg.mid_heads(),
                    context_dim: cross[n - 1],
                    transformer_layers: tlayers[n - 1],
                },
                cfg.mid_block_scale_factor,
                &common,
                &mut index,
            )?),
            None => None,
        };

        // Up block i mirrors down block n-1-i: its heads, layer counts and context width.
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = ch[n - 1];
        for (i, &kind) in up_kinds.iter().enumerate() {
            let r = n - 1 - i;
            let prev_ch = out_ch;
            out_ch = ch[r];
            let skip_in_ch = ch[r.saturating_sub(1)];
            let attn = (kind == UpKind::CrossAttn).then(|| attn_of(r));
            up_blocks.push(UpBlock::new(
                &p.pp(format!("up_blocks.{i}")),
                skip_in_ch,
                out_ch,
                prev_ch,
                layers[r] + 1,
                attn.as_ref(),
                i + 1 < n,
                &common,
                &mut index,
            )?);
        }

        let conv_norm_out =
            GroupNorm::new(&p.pp("conv_norm_out"), cfg.groups(), ch[0], cfg.norm_eps)?;
        let k_out = cfg.conv_out_kernel;
        let conv_out = Conv2d::new(
            &p.pp("conv_out"),
            ch[0],
            cfg.out_channels,
            k_out,
            1,
            (k_out - 1) / 2,
        )?;

        let mut context_dims: Vec<usize> = Vec::new();
        let mut model = Self {
            cfg: cfg.clone(),
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            context_dims: Vec::new(),
            num_attention_layers: index,
        };
        model.visit_attention(&mut |a| {
            if a.info.kind == crate::sd::attention::AttnKind::Cross
                && !context_dims.contains(&a.info.context_dim)
            {
                context_dims.push(a.info.context_dim);
            }
        });
        model.context_dims = context_dims;
        Ok(model)
    }

    /// Builds the model from a diffusers `unet/` folder (config.json + *.safetensors).
    pub fn load(c: &Component, device: &Device) -> Result<Self> {
        let cfg: UNetConfig = c.config()?;
        let config_path = c.dir.join("config.json");
        cfg.validate().map_err(|e| Error::config(&config_path, e))?;
        let p = c.params(device)?;
        Self::new(&cfg, &p)
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Channels the input `sample` must have.
    pub fn in_channels(&self) -> usize {
        self.cfg.in_channels
    }

    /// Number of attention layers (self + cross), e.g. 32 for SD-1.5.
    pub fn num_attention_layers(&self) -> usize {
        self.num_attention_layers
    }

    /// Noise (or v) prediction `[B, out_channels, h, w]`.
    ///
    /// `sample: [B, in_channels, h, w]` (any h, w: odd and non-square sizes follow diffusers);
    /// `timesteps`: a tensor of shape `[B]`, `[1]` or `[]` (one value for the whole batch), of any
    /// numeric dtype, converted to f32 (non-integer values are fine);
    /// `encoder_hidden_states: [B, S, cross_attention_dim]`. `ctx` is passed to every attention
    /// processor unchanged.
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (b, cin, h, w) = sample.dims4().map_err(|_| {
            Error::invalid(format!(
                "UNet sample must be [B, C, h, w], got shape {:?}",
                sample.dims()
            ))
        })?;
        if cin != self.cfg.in_channels {
            return Err(Error::invalid(format!(
                "UNet expects {} input channels, the sample has {cin} (shape {:?})",
                self.cfg.in_channels,
                sample.dims()
            )));
        }
        if h == 0 || w == 0 {
            return Err(Error::invalid("UNet sample has an empty spatial size"));
        }
        let (eb, _, ed) = encoder_hidden_states.dims3().map_err(|_| {
            Error::invalid(format!(
                "encoder_hidden_states must be [B, S, D], got shape {:?}",
                encoder_hidden_states.dims()
            ))
        })?;
        if let Some(&want) = self.context_dims.iter().find(|&&d| d != ed) {
            return Err(Error::invalid(format!(
                "encoder_hidden_states has width {ed}, the UNet's cross-attention expects {want}"
            )));
        }
        if eb != b {
            return Err(Error::invalid(format!(
                "encoder_hidden_states batch {eb} differs from the sample batch {b}"
            )));
        }
        let t = match timesteps.dims() {
            [] | [1] => timesteps.reshape(1)?.broadcast_as(b)?.contiguous()?,
            [n] if *n == b => timesteps.clone(),
            d => {
                return Err(Error::invalid(format!(
                    "timesteps must be [B] = [{b}] or a single value, got shape {d:?}"
                )))
            }
        };

        let sample = if self.cfg.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        let t_emb = timestep_embedding(
            &t,
            self.cfg.block_out_channels[0],
            self.cfg.flip_sin_to_cos,
            self.cfg.freq_shift,
            10000.0,
        )?
        // Computed in f32 like diffusers, then in the model's dtype (f64 in gradient checks).
        .to_dtype(sample.dtype())?;
        let emb = self.time_embedding.forward(&t_emb)?;
        let ehs = encoder_hidden_states;

        let mut x = self.conv_in.forward(&sample)?;
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (y, s) = block.forward(&x, &emb, ehs, ctx)?;
            x = y;
            skips.extend(s);
        }
        if let Some(mid) = &self.mid_block {
            x = mid.forward(&x, &emb, ehs, ctx)?;
        }
        for block in &self.up_blocks {
            let take = block.resnets.len();
            let mut own = skips.split_off(skips.len().saturating_sub(take));
            // The upsampled map must match the next skip it will be concatenated with.
            let upsample_to = match skips.last() {
                Some(s) => Some((s.dim(2)?, s.dim(3)?)),
                None => None,
            };
            x = block.forward(&x, &mut own, &emb, ehs, ctx, upsample_to)?;
        }
        let x = self.conv_norm_out.forward(&x)?.silu()?;
        Ok(self.conv_out.forward(&x)?)
    }
}

impl HasAttention for UNet2DConditionModel {
    fn visit_attention(&self, f: &mut dyn FnMut(&Attention)) {
        for b in &self.down_blocks {
            blocks::visit(&b.attentions, f);
        }
        if let Some(m) = &self.mid_block {
            blocks::visit(&m.attentions, f);
        }
        for b in &self.up_blocks {
            blocks::visit(&b.attentions, f);
        }
    }
}
