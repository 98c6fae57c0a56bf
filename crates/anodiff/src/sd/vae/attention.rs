//! The VAE mid-block self-attention: one head over all H·W positions, GroupNorm in front,
//! biases on every projection and a residual connection. Unlike the UNet's attention it has no
//! processor hook: nothing customises the VAE.

use crate::error::Result;
use crate::nn::{ops, GroupNorm, Linear, Params};
use candle_core::{Module, Tensor};

/// Single-head self-attention of the VAE mid block, with GroupNorm in front and a residual.
pub struct VaeAttention {
    /// Input GroupNorm.
    pub group_norm: GroupNorm,
    /// Query projection (with bias).
    pub to_q: Linear,
    /// Key projection (with bias).
    pub to_k: Linear,
    /// Value projection (with bias).
    pub to_v: Linear,
    /// Output projection (with bias).
    pub to_out: Linear,
    channels: usize,
}

impl VaeAttention {
    /// Loads or creates the layer for `channels` channels (either weight spelling).
    pub fn new(p: &Params, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        // Checkpoints written before diffusers 0.14 use `query/key/value/proj_attn`; diffusers
        // renames them on load, so we accept both spellings.
        let legacy = p.contains("query.weight");
        let name = |new: &'static str, old: &'static str| if legacy { old } else { new };
        let lin = |n: &str| Linear::new(&p.pp(n), channels, channels, true);
        Ok(Self {
            group_norm: GroupNorm::new(&p.pp("group_norm"), groups, channels, eps)?,
            to_q: lin(name("to_q", "query"))?,
            to_k: lin(name("to_k", "key"))?,
            to_v: lin(name("to_v", "value"))?,
            to_out: lin(name("to_out.0", "proj_attn"))?,
            channels,
        })
    }

    /// `x: [B, C, H, W]` → same shape.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        // Single head: [B, 1, T, C].
        let q = self.to_q.forward(&tokens)?.unsqueeze(1)?;
        let k = self.to_k.forward(&tokens)?.unsqueeze(1)?;
        let v = self.to_v.forward(&tokens)?.unsqueeze(1)?;
        let scale = 1.0 / (self.channels as f64).sqrt();
        let attn = ops::sdpa(&q, &k, &v, scale)?.squeeze(1)?;
        let out = self
            .to_out
            .forward(&attn)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + x
    }
}
