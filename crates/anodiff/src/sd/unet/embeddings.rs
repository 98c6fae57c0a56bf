//! Timestep conditioning: the fixed sinusoidal embedding (diffusers `Timesteps`) and the learned
//! two-layer MLP on top of it (`TimestepEmbedding`: `linear_1`, SiLU, `linear_2`).

use crate::error::Result;
use crate::nn::{Linear, Params};
use candle_core::{DType, Module, Tensor};

/// Sinusoidal embedding of `timesteps: [B]` into `[B, dim]`.
///
/// Frequencies are `exp(-ln(max_period) · i / (dim/2 − shift))`, computed step by step in f32 as
/// diffusers does, because at t ≈ 1000 a one-ulp change of a frequency already moves the phase by
/// ~1e-4. `flip_sin_to_cos` puts the cosine half first; an odd `dim` gets one zero column.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f64,
    max_period: f64,
) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let neg_log = -(max_period.ln()) as f32;
    let denom = (half as f64 - downscale_freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((neg_log * i as f32) / denom).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
    let t = timesteps.to_dtype(DType::F32)?.unsqueeze(1)?;
    let args = t.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// `linear_1 → SiLU → linear_2` (diffusers `TimestepEmbedding` without its optional extras).
pub struct TimestepEmbedding {
    /// Sinusoid width → time-embedding width.
    pub linear_1: Linear,
    /// Time-embedding width → time-embedding width.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// Loads or creates `linear_1` and `linear_2`.
    pub fn new(p: &Params, in_dim: usize, time_embed_dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::new(&p.pp("linear_1"), in_dim, time_embed_dim, true)?,
            linear_2: Linear::new(&p.pp("linear_2"), time_embed_dim, time_embed_dim, true)?,
        })
    }
}

impl Module for TimestepEmbedding {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sinusoid_layout_matches_definition() {
        let t = Tensor::new(&[0f32, 3.0], &Device::Cpu).unwrap();
        let e = timestep_embedding(&t, 6, true, 0.0, 10000.0).unwrap();
        let v = e.to_vec2::<f32>().unwrap();
        // Row 0 (t = 0): cos half is 1, sin half is 0.
        assert_eq!(v[0], vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        // Row 1, column 1: cos(3 · 10000^(-1/3)).
        let f = (-(10000f64.ln()) / 3.0).exp();
        assert!((v[1][1] as f64 - (3.0 * f).cos()).abs() < 1e-6);
        assert!((v[1][4] as f64 - (3.0 * f).sin()).abs() < 1e-6);
        let odd = timestep_embedding(&t, 7, false, 1.0, 10000.0).unwrap();
        assert_eq!(odd.dims(), &[2, 7]);
    }
}
