//! Blocks shared by the UNet and the VAE: diffusers' `ResnetBlock2D`, `Downsample2D`, `Upsample2D`.

use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, Linear, Params};
use candle_core::{Module, Tensor};

/// GroupNorm → SiLU → conv3×3 → (+ time embedding) → GroupNorm → SiLU → conv3×3, plus a 1×1
/// shortcut when the channel count changes.
pub struct ResnetBlock2D {
    /// First GroupNorm (SiLU fused).
    pub norm1: GroupNorm,
    /// First 3×3 convolution.
    pub conv1: Conv2d,
    /// Time-embedding projection to `out_ch` (UNet only).
    pub time_emb_proj: Option<Linear>,
    /// Second GroupNorm (SiLU fused).
    pub norm2: GroupNorm,
    /// Second 3×3 convolution.
    pub conv2: Conv2d,
    /// 1×1 shortcut when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
    /// The sum is divided by this (1 in SD).
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// `temb_channels`: None for the VAE (no time embedding).
    pub fn new(
        p: &Params,
        in_ch: usize,
        out_ch: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(&p.pp("norm1"), groups, in_ch, eps)?,
            conv1: Conv2d::new(&p.pp("conv1"), in_ch, out_ch, 3, 1, 1)?,
            time_emb_proj: match temb_channels {
                Some(t) => Some(Linear::new(&p.pp("time_emb_proj"), t, out_ch, true)?),
                None => None,
            },
            norm2: GroupNorm::new(&p.pp("norm2"), groups, out_ch, eps)?,
            conv2: Conv2d::new(&p.pp("conv2"), out_ch, out_ch, 3, 1, 1)?,
            conv_shortcut: if in_ch != out_ch {
                Some(Conv2d::new(&p.pp("conv_shortcut"), in_ch, out_ch, 1, 1, 0)?)
            } else {
                None
            },
            output_scale_factor: 1.0,
        })
    }

    /// `x: [B, C, H, W]`, `temb: [B, T]` (already passed through nothing: SiLU is applied here).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&t.silu()?)?;
            h = h.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// Stride-2 3×3 convolution. The VAE encoder pads asymmetrically (right/bottom by one, no conv
/// padding); the UNet uses symmetric padding 1.
pub struct Downsample2D {
    /// The stride-2 convolution.
    pub conv: Conv2d,
    /// Pad right/bottom by one instead of symmetric padding (VAE encoder).
    pub asymmetric_pad: bool,
}

impl Downsample2D {
    /// `ch → out_ch` at stride 2.
    pub fn new(p: &Params, ch: usize, out_ch: usize, asymmetric_pad: bool) -> Result<Self> {
        let padding = if asymmetric_pad { 0 } else { 1 };
        Ok(Self {
            conv: Conv2d::new(&p.pp("conv"), ch, out_ch, 3, 2, padding)?,
            asymmetric_pad,
        })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.asymmetric_pad {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour ×2 (or to an explicit size) followed by a 3×3 convolution.
pub struct Upsample2D {
    /// The 3×3 convolution after upsampling.
    pub conv: Conv2d,
}

impl Upsample2D {
    /// `ch → out_ch` after ×2 nearest upsampling.
    pub fn new(p: &Params, ch: usize, out_ch: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(&p.pp("conv"), ch, out_ch, 3, 1, 1)?,
        })
    }

    /// `size`: target (h, w); the UNet passes the skip connection's size so odd sizes round-trip.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&x.upsample_nearest2d(th, tw)?)
    }
}
