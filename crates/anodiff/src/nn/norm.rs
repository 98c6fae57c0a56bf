//! GroupNorm and LayerNorm from differentiable basic ops (see the module note in `nn/mod.rs`).

use super::params::{Init, Params};
use crate::error::Result;
use crate::kernels::groupnorm::Act;
use candle_core::{Module, Tensor, D};

/// Group normalisation with a per-channel affine (diffusers' `GroupNorm`).
pub struct GroupNorm {
    /// Number of channel groups.
    pub groups: usize,
    /// Added to the variance.
    pub eps: f64,
    /// Per-channel scale `[C]`.
    pub weight: Tensor,
    /// Per-channel shift `[C]`.
    pub bias: Tensor,
}

impl GroupNorm {
    /// Loads or creates `weight`/`bias` `[channels]` (ones / zeros when fresh); `channels` must split into `groups`.
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
        self.forward_act(x, Act::Silu)
    }

    /// `relu(group_norm(x))`, fused into one kernel on CPU.
    pub fn forward_relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_act(x, Act::Relu)
    }

    /// `act(group_norm(x))`: the fused kernel, or candle's ops with `ANODIFF_KERNELS=candle`.
    fn forward_act(&self, x: &Tensor, act: Act) -> candle_core::Result<Tensor> {
        if crate::kernels::enabled() {
            return crate::kernels::groupnorm::group_norm(
                x,
                &self.weight,
                &self.bias,
                self.groups,
                self.eps,
                act,
            );
        }
        act.apply(self.forward_basic(x)?)
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
        self.forward_act(x, Act::Identity)
    }
}

/// Layer normalisation over the last dimension.
pub struct LayerNorm {
    /// Added to the variance.
    pub eps: f64,
    /// Scale `[dim]`; `None` without affine parameters.
    pub weight: Option<Tensor>,
    /// Shift `[dim]`; `None` without affine parameters.
    pub bias: Option<Tensor>,
}

impl LayerNorm {
    /// Loads or creates `weight`/`bias` `[dim]` (ones / zeros when fresh).
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
        // LayerNorm over the last dim is GroupNorm with one group on `[rows, dim]`: the fused
        // kernel keeps one output in the graph instead of five intermediates, and one backward pass.
        if crate::kernels::enabled() && crate::kernels::supported(x) && x.rank() >= 1 {
            let dim = x.dim(D::Minus1)?;
            let ones = || Tensor::ones(dim, x.dtype(), x.device());
            let zeros = || Tensor::zeros(dim, x.dtype(), x.device());
            let w = self.weight.clone().map_or_else(ones, Ok)?;
            let b = self.bias.clone().map_or_else(zeros, Ok)?;
            let rows = x.elem_count() / dim.max(1);
            let y = crate::kernels::groupnorm::group_norm(
                &x.reshape((rows, dim))?,
                &w,
                &b,
                1,
                self.eps,
                Act::Identity,
            )?;
            return y.reshape(x.shape());
        }
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
