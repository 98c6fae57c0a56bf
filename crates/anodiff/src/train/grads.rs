//! Gradients of the trainable variables, aligned with the optimiser's variable list: taken out of
//! candle's `GradStore`, accumulated over micro-batches, checked for NaN/Inf and clipped by global
//! norm (torch's `clip_grad_norm_`).

use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// One optional gradient per variable (None: the variable took no part in the loss).
#[derive(Clone, Debug)]
pub struct Grads {
    g: Vec<Option<Tensor>>,
}

impl Grads {
    /// Picks the gradients of `vars` out of a `loss.backward()` result, in `vars` order.
    pub fn from_store(store: &GradStore, vars: &[(String, Var)]) -> Self {
        Self {
            g: vars
                .iter()
                .map(|(_, v)| store.get(v.as_tensor()).cloned())
                .collect(),
        }
    }

    /// Gradients given directly (tests, custom backward passes).
    pub fn from_tensors(g: Vec<Option<Tensor>>) -> Self {
        Self { g }
    }

    /// Number of variables (some may have no gradient).
    pub fn len(&self) -> usize {
        self.g.len()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.g.is_empty()
    }

    /// Gradient of variable `i`, if it took part in the loss.
    pub fn get(&self, i: usize) -> Option<&Tensor> {
        self.g.get(i).and_then(|g| g.as_ref())
    }

    /// Adds another micro-batch's gradients (None counts as zero).
    pub fn accumulate(&mut self, other: Grads) -> Result<()> {
        if other.g.len() != self.g.len() {
            return Err(crate::Error::invalid(format!(
                "gradient lists differ in length ({} vs {})",
                self.g.len(),
                other.g.len()
            )));
        }
        for (mine, theirs) in self.g.iter_mut().zip(other.g) {
            *mine = match (mine.take(), theirs) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            };
        }
        Ok(())
    }

    /// Multiplies every gradient by `s` (1/k averages k accumulated micro-batches).
    pub fn scale(&mut self, s: f64) -> Result<()> {
        if s == 1.0 {
            return Ok(());
        }
        for g in self.g.iter_mut().flatten() {
            *g = (&*g * s)?;
        }
        Ok(())
    }

    /// Squared L2 norm of each gradient, summed in f64 so large finite values do not overflow.
    fn squared_norms(&self) -> Result<Vec<f64>> {
        self.g
            .iter()
            .map(|g| match g {
                Some(g) => Ok(g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?),
                None => Ok(0.0),
            })
            .collect()
    }

    /// The L2 norm of all gradients taken together.
    pub fn global_norm(&self) -> Result<f64> {
        Ok(self.squared_norms()?.iter().sum::<f64>().sqrt())
    }

    /// Index of the first gradient holding a NaN or Inf, if any.
    pub fn first_non_finite(&self) -> Result<Option<usize>> {
        Ok(self.squared_norms()?.iter().position(|n| !n.is_finite()))
    }

    /// Scales gradients so their global norm is at most `max_norm` (torch's `clip_grad_norm_`:
    /// factor `max_norm / (norm + 1e-6)`, applied only when below 1). Returns the norm before
    /// clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            self.scale(coef)?;
        }
        Ok(norm)
    }
}
