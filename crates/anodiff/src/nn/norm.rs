//! GroupNorm and LayerNorm from differentiable basic ops (see the module note in `nn/mod.rs`).

use super::params::{Init, Params};
use crate::error::Result;
use candle_core::{Module, Tensor, D};

pub struct GroupNorm {
    pub groups: usize,
    pub eps: f64,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl GroupNorm {
    pub fn new(p: &Params, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(crate::Error::invalid(format!(
                "{}: GroupNorm with {channels} channels cannot be split into {groups} groups",
                p.prefix()
            )));
        }
        Ok(Self {
            groups,
            eps,
            weight: p.get(&[channels], "weight", Init::Ones)?,
            bias: p.get(&[channels], "bias", Init::Zeros)?,
        })
    }

    /// `silu(group_norm(x))`, fused into one kernel on CPU (see `kernels::groupnorm`).
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if crate::kernels::enabled() {
            crate::kernels::groupnorm::group_norm(
                x,
                &self.weight,
                &self.bias,
                self.groups,
                self.eps,
                true,
            )
        } else {
            self.forward_basic(x)?.silu()
        }
    }

    /// The composition of candle basic ops (the `ANODIFF_KERNELS=candle` path).
    fn forward_basic(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let xg = x.reshape((b, self.groups, ()))?;
        let mean = xg.mean_keepdim(D::Minus1)?;
        let xc = xg.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .reshape(dims.as_slice())?;
        let mut shape = vec![1usize; dims.len()];
        shape[1] = c;
        xn.broadcast_mul(&self.weight.reshape(shape.as_slice())?)?
            .broadcast_add(&self.bias.reshape(shape.as_slice())?)
    }
}

impl Module for GroupNorm {
    /// `x: [B, C, …]`; statistics over each group of channels and all trailing positions.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if crate::kernels::enabled() {
            crate::kernels::groupnorm::group_norm(
                x,
                &self.weight,
                &self.bias,
                self.groups,
                self.eps,
                false,
            )
        } else {
            self.forward_basic(x)
        }
    }
}

pub struct LayerNorm {
    pub eps: f64,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
}

impl LayerNorm {
    pub fn new(p: &Params, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            eps,
            weight: Some(p.get(&[dim], "weight", Init::Ones)?),
            bias: Some(p.get(&[dim], "bias", Init::Zeros)?),
        })
    }

    /// Without learnable affine parameters (`elementwise_affine=False`).
    pub fn plain(eps: f64) -> Self {
        Self {
            eps,
            weight: None,
            bias: None,
        }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let mut y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        if let Some(w) = &self.weight {
            y = y.broadcast_mul(w)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}
