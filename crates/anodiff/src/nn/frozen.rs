//! Backward through frozen weights without computing their gradients.
//!
//! candle's backward computes the gradient of *every* operand of a tracked op, including frozen
//! weights that nobody will read (for `x @ W` it always forms `xᵀ·g`). In a LoRA step that doubles
//! the backward GEMM work and keeps a weight-sized buffer per layer. [`input_grad_only`] attaches
//! an already computed output `y = f(x)` to the graph through a custom op whose backward returns
//! only `∂L/∂x`, given by the caller.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

type InputGrad = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

struct InputGradOnly {
    dx: InputGrad,
}

impl CustomOp2 for InputGradOnly {
    fn name(&self) -> &'static str {
        "input-grad-only"
    }

    /// Returns `y` (the second argument) unchanged.
    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _lx: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (start, end) = ly.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("input_grad_only: y must be contiguous".into())
        })?;
        let out = match y {
            CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
            CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
            _ => candle_core::bail!("input_grad_only: only f32 and f64 are supported"),
        };
        Ok((out, ly.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.dx)(grad)?), None))
    }
}

/// `y` (computed from `x` outside the graph) with a backward that yields only `dx(∂L/∂y)`.
/// When `x` does not take part in a backward pass, `y` is returned as is.
pub fn input_grad_only(
    x: &Tensor,
    y: Tensor,
    dx: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() || !x.device().is_cpu() {
        return Ok(y);
    }
    x.apply_op2(&y.contiguous()?, InputGradOnly { dx: Box::new(dx) })
}

/// Whether an op with these parameters can skip their gradients: none of them is trainable.
pub fn all_frozen(params: &[Option<&Tensor>]) -> bool {
    params.iter().flatten().all(|t| !t.track_op())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::linear::linear;
    use candle_core::{Device, Var};

    /// The frozen path gives the same ∂L/∂x as candle's full backward, and no gradient for the
    /// frozen weight (it is not even computed).
    #[test]
    fn frozen_linear_input_grad_matches_full_backward() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f64, 1.0, (5, 3), &dev).unwrap();
        let b = Tensor::randn(0f64, 1.0, 5, &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 4, 3), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f64, 1.0, (2, 4, 5), &dev).unwrap();

        let y = linear(x.as_tensor(), &w, Some(&b)).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_none(), "frozen weight must get no gradient");
        let dx = g.get(x.as_tensor()).unwrap();

        // Reference: the weight as a variable takes candle's ordinary matmul backward.
        let wv = Var::from_tensor(&w).unwrap();
        let y2 = linear(x.as_tensor(), wv.as_tensor(), Some(&b)).unwrap();
        let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let dx2 = g2.get(x.as_tensor()).unwrap();
        let d = (dx - dx2).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() < 1e-12);
        let dy = (y - y2).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(dy.to_scalar::<f64>().unwrap(), 0.0);
    }
}
