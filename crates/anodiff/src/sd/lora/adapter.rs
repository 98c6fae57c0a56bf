//! LoRA on any named `Linear` through its adapter slot (the CLIP text encoder's projections).
//! A `Linear` sees no `ForwardCtx`, so every row uses one set: the adapter's active set.

use super::layer::LoraLayer;
use crate::nn::{Linear, LinearAdapter};
use candle_core::Tensor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A [`LoraLayer`] as a [`LinearAdapter`]: the base layer plus the active set's term.
pub struct LoraLinearAdapter {
    /// The layer's LoRA weights.
    pub layer: Arc<LoraLayer>,
    active: AtomicUsize,
}

impl LoraLinearAdapter {
    /// Adapts with `layer`, set 0 active.
    pub fn new(layer: Arc<LoraLayer>) -> Self {
        Self {
            layer,
            active: AtomicUsize::new(0),
        }
    }

    /// Selects the set used for every row (0 by default).
    pub fn set_active(&self, set: usize) {
        self.active.store(set, Ordering::Relaxed);
    }
}

impl LinearAdapter for LoraLinearAdapter {
    fn forward(&self, base: &Linear, input: &Tensor) -> candle_core::Result<Tensor> {
        let set = self.active.load(Ordering::Relaxed);
        if set >= self.layer.sets.len() {
            candle_core::bail!(
                "LoRA `{}`: active set {set} but only {} set(s)",
                self.layer.module,
                self.layer.sets.len()
            );
        }
        let b = input.dims().first().copied().unwrap_or(0);
        let branch = vec![set; b];
        self.layer.forward_linear(base, input, Some(&branch))
    }
}
