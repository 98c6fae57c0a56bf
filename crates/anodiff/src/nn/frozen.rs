//! Backward through frozen weights without computing their gradients.
//!
//! candle's backward computes the gradient of *every* operand of a tracked op, including frozen
//! weights that nobody will read (for `x @ W` it always forms `xᵀ·g`). In a LoRA step that doubles
//! the backward GEMM work and keeps a weight-sized buffer per layer. [`input_grad_only`] attaches
//! an already computed output `y = f(x)` to the graph through a custom op whose backward returns
//! only `∂L/∂x`, given by the caller.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

type InputGrad = Box<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// A one-input op on `x` whose forward hands out the precomputed `y` and whose backward is `dx`.
/// Holding `y` as data moved into the op (instead of as a second graph input) keeps the graph from
/// retaining a second copy of every frozen layer's output until the backward pass ends.
struct InputGradOnly {
    y: Mutex<Option<CpuStorage>>,
    shape: Shape,
    dx: InputGrad,
}

impl CustomOp1 for InputGradOnly {
    fn name(&self) -> &'static str {
        "input-grad-only"
    }

    /// Returns `y`; runs exactly once, when the op is applied.
    fn cpu_fwd(&self, _x: &CpuStorage, _lx: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self
            .y
            .lock()
            .map_err(|_| candle_core::Error::Msg("input_grad_only: poisoned".into()))?
            .take();
        let y =
            y.ok_or_else(|| candle_core::Error::Msg("input_grad_only: forward ran twice".into()))?;
        Ok((y, self.shape.clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((self.dx)(grad)?))
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
    let shape = y.shape().clone();
    let flat = y.flatten_all()?;
    let data = match y.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1::<f32>()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1::<f64>()?),
        dt => candle_core::bail!("input_grad_only: only f32 and f64 are supported, got {dt:?}"),
    };
    drop((y, flat));
    x.apply_op1(InputGradOnly {
        y: Mutex::new(Some(data)),
        shape,
        dx: Box::new(dx),
    })
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
