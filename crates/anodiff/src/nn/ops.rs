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

/// Max-pooling of `[B, C, H, W]` with a `k`×`k` window every `stride` pixels, no padding, floor
/// output size (PyTorch's `max_pool2d(x, k, stride)`), from differentiable candle ops so the
/// gradient is exact: candle's own `max_pool2d` backward rescales the gradient and refuses
/// overlapping windows (`k ≠ stride`), which AlexNet uses. `k == stride` is a reshape + max;
/// otherwise the max of the k² strided shifted views.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if k == 0 || stride == 0 || h < k || w < k {
        candle_core::bail!("max_pool2d: window {k} stride {stride} on a {h}x{w} map");
    }
    let (oh, ow) = ((h - k) / stride + 1, (w - k) / stride + 1);
    if k == stride {
        return x
            .narrow(2, 0, oh * k)?
            .narrow(3, 0, ow * k)?
            .reshape((b, c, oh, k, ow, k))?
            .max(5)?
            .max(3);
    }
    // Every `stride`-th element along `dim` from `start`, `count` of them: narrow, pad to a
    // multiple of `stride`, split the axis and keep the first of each group.
    let strided = |t: &Tensor, dim: usize, start: usize, count: usize| {
        let v = t.narrow(dim, start, stride * (count - 1) + 1)?;
        let v = if stride > 1 {
            v.pad_with_zeros(dim, 0, stride - 1)?
        } else {
            v
        };
        let mut shape = v.dims().to_vec();
        shape[dim] = count;
        shape.insert(dim + 1, stride);
        v.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
    };
    let mut out: Option<Tensor> = None;
    for dy in 0..k {
        let rows = strided(x, 2, dy, oh)?;
        for dx in 0..k {
            let v = strided(&rows, 3, dx, ow)?;
            out = Some(match out {
                None => v,
                Some(m) => m.maximum(&v)?,
            });
        }
    }
    Ok(out.expect("k >= 1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn max_pool2d_matches_candle_forward_and_routes_the_gradient_to_the_maxima() {
        let dev = Device::Cpu;
        // Distinct values (no ties), odd sizes: floor output size, overlapping and tiling windows.
        let (h, w) = (9, 7);
        let v: Vec<f32> = (0..2 * 3 * h * w)
            .map(|i| ((i * 7919) % 1009) as f32 / 1009.0)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(v, (2, 3, h, w), &dev).unwrap()).unwrap();
        for (k, s) in [(3, 2), (2, 2), (3, 1), (2, 3)] {
            let ours = max_pool2d(&x, k, s).unwrap();
            let want = x.max_pool2d_with_stride(k, s).unwrap();
            assert_eq!(ours.dims(), want.dims(), "k {k} s {s}");
            let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(values(&ours), values(&want), "k {k} s {s}");
            // d(sum)/dx counts, per input, the windows whose maximum it is.
            let g = ours.sum_all().unwrap().backward().unwrap();
            let g: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
            let mut count = vec![0f32; xv.len()];
            for plane in 0..6 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = (f32::MIN, 0);
                        for dy in 0..k {
                            for dx in 0..k {
                                let i = plane * h * w + (oy * s + dy) * w + ox * s + dx;
                                if xv[i] > best.0 {
                                    best = (xv[i], i);
                                }
                            }
                        }
                        count[best.1] += 1.0;
                    }
                }
            }
            assert_eq!(g, count, "gradient, k {k} s {s}");
        }
        assert!(max_pool2d(&x, 10, 2).is_err());
    }
}
