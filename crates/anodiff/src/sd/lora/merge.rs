//! Folding a LoRA set into the base weights: `W' = W + scale · up @ down`. The merged model runs
//! without any adapter and gives the same output as base + LoRA (up to rounding).

use super::install::Lora;
use super::io::LoraComponent;
use super::layer::LoraLayer;
use crate::error::{Error, Result};
use crate::nn::Linear;
use crate::sd::attention::{HasAttention, Proj};
use crate::sd::clip::ClipTextModel;
use candle_core::Tensor;

/// `base + scale·up@down` of set `set` of `layer`.
pub fn merge_weight(base: &Tensor, layer: &LoraLayer, set: usize) -> Result<Tensor> {
    let s = layer
        .sets
        .get(set)
        .ok_or_else(|| Error::invalid(format!("LoRA `{}` has no set {set}", layer.module)))?;
    if base.dims() != [layer.out_dim, layer.in_dim] {
        return Err(Error::invalid(format!(
            "LoRA `{}`: base weight {:?} is not [{}, {}]",
            layer.module,
            base.dims(),
            layer.out_dim,
            layer.in_dim
        )));
    }
    Ok((base + s.delta_weight()?.to_dtype(base.dtype())?)?)
}

/// A new `Linear` (same name and bias, no adapter) with set `set` merged into its weight.
pub fn merge_linear(linear: &Linear, layer: &LoraLayer, set: usize) -> Result<Linear> {
    let w = merge_weight(&linear.weight, layer, set)?;
    Ok(Linear::from_tensors(w, linear.bias.clone(), &linear.name))
}

impl Lora {
    /// Merged UNet weights `<module>.weight` (diffusers names) for every LoRA layer; overlay them on
    /// the base checkpoint tensors to build a merged model.
    pub fn merged_unet_weights(
        &self,
        unet: &dyn HasAttention,
        set: usize,
    ) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let mut err = None;
        unet.visit_attention(&mut |a| {
            for p in Proj::ALL {
                let m = format!("{}.{}", a.info.name, p.suffix());
                if let Some(l) = self.layers().iter().find(|l| l.module == m) {
                    match merge_weight(&a.proj(p).weight, l, set) {
                        Ok(w) => out.push((format!("{m}.weight"), w)),
                        Err(e) => err = Some(e),
                    }
                }
            }
        });
        self.finish(out, err)
    }

    /// Merged CLIP weights under the checkpoint's own names (`<linear name>.weight`).
    pub fn merged_clip_weights(
        &self,
        clip: &ClipTextModel,
        set: usize,
    ) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let mut err = None;
        clip.visit_linears(&mut |lin| {
            let m = LoraComponent::TextEncoder.canonical(&lin.name);
            if let Some(l) = self.layers().iter().find(|l| l.module == m) {
                match merge_weight(&lin.weight, l, set) {
                    Ok(w) => out.push((format!("{}.weight", lin.name), w)),
                    Err(e) => err = Some(e),
                }
            }
        });
        self.finish(out, err)
    }

    fn finish(
        &self,
        out: Vec<(String, Tensor)>,
        err: Option<Error>,
    ) -> Result<Vec<(String, Tensor)>> {
        if let Some(e) = err {
            return Err(e);
        }
        if out.len() != self.layers().len() {
            return Err(Error::invalid(format!(
                "LoRA has {} layers but only {} were found in the model",
                self.layers().len(),
                out.len()
            )));
        }
        Ok(out)
    }
}
