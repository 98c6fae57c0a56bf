//! Fully connected layer with diffusers/PyTorch weight layout (`weight: [out, in]`) and an optional
//! adapter slot through which LoRA wraps any named linear layer without changing the model code.

use super::params::{Init, Params};
use crate::error::Result;
use candle_core::{Module, Tensor};
use std::sync::{Arc, RwLock};

/// Something that computes a linear layer's output in place of the plain layer (LoRA, merged
/// deltas, probes). It gets the layer itself, not just its output, so it can fuse its change with
/// the base computation (`Linear::forward_base` is the unadapted layer).
pub trait LinearAdapter: Send + Sync {
    /// The adapted output for `input` (`base` is the layer being adapted).
    fn forward(&self, base: &Linear, input: &Tensor) -> candle_core::Result<Tensor>;
}

/// A fully connected layer, `y = x Wᵀ + b` over the last dimension, with an adapter slot.
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`, if any.
    pub bias: Option<Tensor>,
    /// Full dotted name (`…attn1.to_q`), used for targeting adapters by pattern.
    pub name: String,
    adapter: RwLock<Option<Arc<dyn LinearAdapter>>>,
}

impl Linear {
    /// Loads or creates `p.weight [out, inp]` and, if `bias`, `p.bias [out]`.
    pub fn new(p: &Params, inp: usize, out: usize, bias: bool) -> Result<Self> {
        let init = Init::torch_default(inp);
        let weight = p.get(&[out, inp], "weight", init)?;
        let bias = if bias {
            Some(p.get(&[out], "bias", init)?)
        } else {
            None
        };
        Ok(Self::from_tensors(weight, bias, p.prefix()))
    }

    /// A layer from existing tensors; `name` is its full dotted name.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, name: &str) -> Self {
        Self {
            weight,
            bias,
            name: name.to_string(),
            adapter: RwLock::new(None),
        }
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Installs (or, with `None`, removes) the adapter that replaces this layer's forward.
    pub fn set_adapter(&self, adapter: Option<Arc<dyn LinearAdapter>>) {
        *self.adapter.write().unwrap() = adapter;
    }

    /// The installed adapter, if any.
    pub fn adapter(&self) -> Option<Arc<dyn LinearAdapter>> {
        self.adapter.read().unwrap().clone()
    }

    /// The layer without its adapter.
    pub fn forward_base(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        linear(x, &self.weight, self.bias.as_ref())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.adapter() {
            Some(a) => a.forward(self, x),
            None => self.forward_base(x),
        }
    }
}

/// `x @ weight.T + bias` over the last dimension of `x` (any rank ≥ 1).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let inp = *dims.last().unwrap();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let frozen = super::frozen::all_frozen(&[Some(weight), bias]);
    if frozen {
        // Frozen layer (inference, LoRA training): one op, bias preloaded, only ∂L/∂x in backward.
        if let Some(y) = crate::kernels::lowrank::linear_frozen(x, weight, bias)? {
            return Ok(y);
        }
    }
    if frozen && x.track_op() {
        // Frozen layer inside a backward pass off our kernels: only ∂L/∂x = g·W is needed.
        let y = linear(&x.detach(), weight, bias)?;
        let w = weight.clone();
        return super::frozen::input_grad_only(x, y, move |g| {
            let out = w.dims()[0];
            let gd = g.dims().to_vec();
            let rows: usize = gd[..gd.len() - 1].iter().product();
            let mut xd = gd;
            *xd.last_mut().unwrap() = w.dims()[1];
            g.reshape((rows, out))?.matmul(&w)?.reshape(xd)
        });
    }
    let y = x.reshape((rows, inp))?.matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    *out_dims.last_mut().unwrap() = weight.dims()[0];
    y.reshape(out_dims)
}
