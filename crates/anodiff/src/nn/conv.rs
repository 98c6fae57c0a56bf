//! 2-D convolution with PyTorch layout (`weight: [out, in, kh, kw]`). Kept behind this type so the
//! CPU kernel can be swapped for our own without touching model code.

use super::params::{Init, Params};
use crate::error::Result;
use candle_core::{Module, Tensor};

/// A 2-D convolution layer (square kernel, same stride and padding on both axes).
pub struct Conv2d {
    /// `[out, in, k, k]`.
    pub weight: Tensor,
    /// `[out]`, if any.
    pub bias: Option<Tensor>,
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl Conv2d {
    /// Loads or creates `p.weight [out, inp, kernel, kernel]` and `p.bias [out]` (PyTorch init when fresh).
    pub fn new(
        p: &Params,
        inp: usize,
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let init = Init::torch_default(inp * kernel * kernel);
        let weight = p.get(&[out, inp, kernel, kernel], "weight", init)?;
        let bias = Some(p.get(&[out], "bias", init)?);
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if crate::kernels::enabled() {
            let b = self.bias.as_ref();
            return crate::kernels::conv2d::conv2d_bias(
                x,
                &self.weight,
                b,
                self.stride,
                self.padding,
            );
        }
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}
