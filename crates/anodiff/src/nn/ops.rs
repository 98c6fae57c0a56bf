//! Activation and attention helpers built from differentiable candle ops.

use candle_core::{Tensor, D};

/// Softmax over the last dimension. The max is detached: softmax is shift-invariant, so this
/// changes nothing numerically and keeps the gradient exact.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// `x · sigmoid(x)`.
pub fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.silu()
}

/// `1 / (1 + e^-x)`.
pub fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    // 1 / (1 + e^-x) from basic ops so it has a backward.
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// Exact (erf) GELU, PyTorch's `F.gelu` default.
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.gelu_erf()
}

/// OpenAI CLIP's `quick_gelu`: x·σ(1.702x).
pub fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.mul(&sigmoid(&(x * 1.702)?)?)
}

/// Scaled-dot-product attention on `[B, H, T, d]` tensors: the blocked CPU kernel
/// (`kernels::attention`) when kernels are on and it takes these inputs, else [`sdpa_basic`].
/// The only place that makes this choice.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    use crate::kernels::{self, attention};
    if kernels::enabled() && attention::applies(q, k, v) {
        attention::attention(q, k, v, scale)
    } else {
        sdpa_basic(q, k, v, scale)
    }
}

/// Plain scaled-dot-product attention from candle basic ops (materialises all scores).
pub fn sdpa_basic(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    softmax_last_dim(&scores)?.matmul(v)
}
