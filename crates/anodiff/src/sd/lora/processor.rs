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
    pub q: Option<Arc<LoraLayer>>,
    pub k: Option<Arc<LoraLayer>>,
    pub v: Option<Arc<LoraLayer>>,
    pub out: Option<Arc<LoraLayer>>,
}

impl LoraAttnProcessor {
    pub fn slot(&mut self, proj: Proj) -> &mut Option<Arc<LoraLayer>> {
        match proj {
            Proj::Q => &mut self.q,
            Proj::K => &mut self.k,
            Proj::V => &mut self.v,
            Proj::Out => &mut self.out,
        }
    }

    pub fn get(&self, proj: Proj) -> Option<&Arc<LoraLayer>> {
        match proj {
            Proj::Q => self.q.as_ref(),
            Proj::K => self.k.as_ref(),
            Proj::V => self.v.as_ref(),
            Proj::Out => self.out.as_ref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_none() && self.k.is_none() && self.v.is_none() && self.out.is_none()
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
