//! The UNet's spatial transformer (diffusers `Transformer2DModel` over continuous input) and its
//! `BasicTransformerBlock`: LayerNorm → self-attention, LayerNorm → cross-attention,
//! LayerNorm → GEGLU feed-forward, each with a residual add.

use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, LayerNorm, Linear, Params};
use crate::sd::attention::{Attention, AttnKind, AttnLayerInfo, ForwardCtx};
use candle_core::{Module, Tensor};

/// Feed-forward with a GEGLU gate: `ff.net.0.proj` (C → 2·4C), `a · gelu(b)`, `ff.net.2` (4C → C).
pub struct FeedForward {
    /// `C → 8C`: the value and gate halves.
    pub proj_in: Linear,
    /// `4C → C`.
    pub proj_out: Linear,
}

impl FeedForward {
    /// Loads or creates both projections for width `dim`.
    pub fn new(p: &Params, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj_in: Linear::new(&p.pp("net.0.proj"), dim, 2 * inner, true)?,
            proj_out: Linear::new(&p.pp("net.2"), inner, dim, true)?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.proj_in.forward(x)?;
        self.proj_out.forward(&crate::kernels::geglu::geglu(&h)?)
    }
}

/// What a transformer needs to know to name and number its attention layers.
pub struct AttnSpec {
    /// Attention heads.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// Width of the text states.
    pub context_dim: usize,
}

/// LayerNorm → self-attention, LayerNorm → cross-attention, LayerNorm → GEGLU MLP, each residual.
pub struct BasicTransformerBlock {
    /// Before self-attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// Before cross-attention.
    pub norm2: LayerNorm,
    /// Cross-attention on the text states.
    pub attn2: Attention,
    /// Before the feed-forward.
    pub norm3: LayerNorm,
    /// GEGLU feed-forward.
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    /// `p` is the block's scope (`…transformer_blocks.j`); `next_index` numbers attention layers in
    /// forward order across the whole model and is advanced by two.
    pub fn new(p: &Params, spec: &AttnSpec, next_index: &mut usize) -> Result<Self> {
        let dim = spec.heads * spec.head_dim;
        let mut attn = |name: &str, kind: AttnKind, context_dim: usize| {
            let scope = p.pp(name);
            let info = AttnLayerInfo {
                name: scope.prefix().to_string(),
                index: *next_index,
                kind,
                heads: spec.heads,
                head_dim: spec.head_dim,
                query_dim: dim,
                context_dim,
            };
            *next_index += 1;
            Attention::new(&scope, info)
        };
        let attn1 = attn("attn1", AttnKind::SelfAttn, dim)?;
        let attn2 = attn("attn2", AttnKind::Cross, spec.context_dim)?;
        Ok(Self {
            norm1: LayerNorm::new(&p.pp("norm1"), dim, 1e-5)?,
            attn1,
            norm2: LayerNorm::new(&p.pp("norm2"), dim, 1e-5)?,
            attn2,
            norm3: LayerNorm::new(&p.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::new(&p.pp("ff"), dim)?,
        })
    }

    /// `x: [B, h·w, C]` tokens of an `hw` grid, `context: [B, S, context_dim]`.
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        ctx: &ForwardCtx,
        hw: (usize, usize),
    ) -> Result<Tensor> {
        let a = self
            .attn1
            .forward(&self.norm1.forward(x)?, None, ctx, Some(hw))?;
        let x = (a + x)?;
        let a = self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context), ctx, Some(hw))?;
        let x = (a + x)?;
        let f = self.ff.forward(&self.norm3.forward(&x)?)?;
        Ok((f + x)?)
    }
}

/// `proj_in` / `proj_out`: a 1×1 convolution (SD-1) or a linear map on tokens (SD-2,
/// `use_linear_projection`).
pub enum Projection {
    /// 1×1 convolution on `[B, C, h, w]`.
    Conv(Conv2d),
    /// Linear map on tokens `[B, h·w, C]`.
    Linear(Linear),
}

impl Projection {
    fn new(p: &Params, inp: usize, out: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::new(p, inp, out, true)?)
        } else {
            Projection::Conv(Conv2d::new(p, inp, out, 1, 1, 0)?)
        })
    }
}

/// GroupNorm → `proj_in` → transformer blocks → `proj_out`, plus the input as residual.
pub struct Transformer2DModel {
    /// Input GroupNorm.
    pub norm: GroupNorm,
    /// Into the transformer width.
    pub proj_in: Projection,
    /// The transformer blocks.
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// Back to the input width.
    pub proj_out: Projection,
}

impl Transformer2DModel {
    /// `channels` = in = out channels = heads · head_dim.
    pub fn new(
        p: &Params,
        channels: usize,
        spec: &AttnSpec,
        num_layers: usize,
        groups: usize,
        linear_projection: bool,
        next_index: &mut usize,
    ) -> Result<Self> {
        let inner = spec.heads * spec.head_dim;
        let norm = GroupNorm::new(&p.pp("norm"), groups, channels, 1e-6)?;
        let proj_in = Projection::new(&p.pp("proj_in"), channels, inner, linear_projection)?;
        let blocks = (0..num_layers)
            .map(|j| {
                BasicTransformerBlock::new(
                    &p.pp(format!("transformer_blocks.{j}")),
                    spec,
                    next_index,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let proj_out = Projection::new(&p.pp("proj_out"), inner, channels, linear_projection)?;
        Ok(Self {
            norm,
            proj_in,
            transformer_blocks: blocks,
            proj_out,
        })
    }

    /// `x: [B, C, h, w]` → same shape, with the residual added.
    pub fn forward(&self, x: &Tensor, context: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hn = self.norm.forward(x)?;
        // [B, C, h, w] ↔ [B, h·w, C]; for the conv projection the channel change happens before
        // flattening, for the linear one after (same result, diffusers' order kept).
        let to_tokens = |t: &Tensor| -> candle_core::Result<Tensor> {
            let ch = t.dim(1)?;
            t.permute((0, 2, 3, 1))?.reshape((b, h * w, ch))
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&hn)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&hn)?)?,
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, context, ctx, (h, w))?;
        }
        let to_map = |t: &Tensor| -> candle_core::Result<Tensor> {
            let ch = t.dim(2)?;
            t.reshape((b, h, w, ch))?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(&tokens)?)?,
            Projection::Linear(lin) => to_map(&lin.forward(&tokens)?)?,
        };
        debug_assert_eq!(out.dim(1)?, c);
        Ok((out + x)?)
    }

    /// Attention layers in forward order.
    pub fn visit_attention(&self, f: &mut dyn FnMut(&Attention)) {
        for b in &self.transformer_blocks {
            f(&b.attn1);
            f(&b.attn2);
        }
    }
}
