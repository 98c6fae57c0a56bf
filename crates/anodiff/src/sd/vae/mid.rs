//! diffusers `UNetMidBlock2D` as the VAE uses it: resnet → (attention) → resnet, no time embedding.

use super::attention::VaeAttention;
use crate::error::Result;
use crate::nn::Params;
use crate::sd::resnet::ResnetBlock2D;
use candle_core::Tensor;

/// resnet → attention (optional) → resnet at the lowest resolution.
pub struct VaeMidBlock {
    /// First resnet.
    pub resnet_in: ResnetBlock2D,
    /// Self-attention, unless disabled in the config.
    pub attention: Option<VaeAttention>,
    /// Second resnet.
    pub resnet_out: ResnetBlock2D,
}

impl VaeMidBlock {
    /// Loads or creates the block for `ch` channels.
    pub fn new(p: &Params, ch: usize, groups: usize, add_attention: bool) -> Result<Self> {
        let r = p.pp("resnets");
        Ok(Self {
            resnet_in: ResnetBlock2D::new(&r.pp(0), ch, ch, None, groups, super::EPS)?,
            attention: if add_attention {
                Some(VaeAttention::new(
                    &p.pp("attentions.0"),
                    ch,
                    groups,
                    super::EPS,
                )?)
            } else {
                None
            },
            resnet_out: ResnetBlock2D::new(&r.pp(1), ch, ch, None, groups, super::EPS)?,
        })
    }

    /// `x: [B, C, h, w]` → same shape.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.resnet_in.forward(x, None)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnet_out.forward(&h, None)
    }
}
