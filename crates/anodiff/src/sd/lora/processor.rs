//! LoRA on a UNet attention layer through the `linear` stage of the attention-processor hook:
//! each targeted projection (Q, K, V, Out) becomes `base(input) + scale·up(down(input))` of its
//! row's set, fused into one op where possible.

use super::layer::LoraLayer;
use crate::error::Result;
use crate::nn::Linear;
use crate::sd::attention::{AttnCall, AttnProcessor, Proj};
use candle_core::Tensor;
use std::sync::Arc;

/// The LoRA layers of one attention layer, by projection (None: projection not targeted).
#[derive(Default, Clone)]
pub struct LoraAttnProcessor {
    /// Indexed by `Proj as usize` (the order of [`Proj::ALL`]).
    layers: [Option<Arc<LoraLayer>>; 4],
}

impl LoraAttnProcessor {
    /// The place of projection `proj`'s LoRA layer.
    pub fn slot(&mut self, proj: Proj) -> &mut Option<Arc<LoraLayer>> {
        &mut self.layers[proj as usize]
    }

    /// Projection `proj`'s LoRA layer, if it is targeted.
    pub fn get(&self, proj: Proj) -> Option<&Arc<LoraLayer>> {
        self.layers[proj as usize].as_ref()
    }

    /// True when no projection is targeted.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(Option::is_none)
    }
}

impl AttnProcessor for LoraAttnProcessor {
    fn linear(
        &self,
        call: &AttnCall,
        proj: Proj,
        layer: &Linear,
        input: &Tensor,
    ) -> Result<Option<Tensor>> {
        let Some(l) = self.get(proj) else {
            return Ok(None);
        };
        Ok(Some(l.forward_linear(
            layer,
            input,
            call.ctx.branch.as_deref(),
        )?))
    }
}
