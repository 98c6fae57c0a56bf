//! LPIPS, the learned perceptual image distance of Zhang et al. 2018 ("The Unreasonable
//! Effectiveness of Deep Features as a Perceptual Metric", version 0.1 of the `lpips` package),
//! for when a user supplies its weights. Nothing here ships or assumes pretrained weights: with
//! none, callers use their weight-free distances.
//!
//! Definition (for images in [-1, 1]): shift and scale each channel
//! (`(x − [−.030, −.088, −.188]) / [.458, .448, .450]`), run the ImageNet backbone's feature
//! stack (AlexNet or VGG16) and take the ReLU outputs of five layers; at each layer normalise
//! every feature vector to unit length over channels, square the difference of the two images'
//! vectors, weight the channels with a learned non-negative 1×1 head `lin_l` and get a one-channel
//! map `d_l`. The distance is `Σ_l mean(d_l)`; the *spatial* form upsamples each `d_l` to the
//! image size (bilinear, half-pixel centres) and sums them.
//!
//! Weights: one safetensors file with the names of `lpips.LPIPS(net=…).state_dict()` —
//! `net.slice<s>.<j>.weight|bias` for the backbone convolution at index `j` of torchvision's
//! `features`, `lin<l>.model.1.weight [1, C_l, 1, 1]` for the heads (`scaling_layer.*` is ignored:
//! its constants are fixed). `tools/export_lpips_weights.py` writes it. The net is recognised from
//! the first convolution's shape (11×11: AlexNet, 3×3: VGG16).
//!
//! Parity with the `lpips` package (distance, spatial map and input gradient) is tested on the
//! fixture of `tools/parity/make_lpips_fixtures.py`.

use crate::error::{Error, Result};
use crate::nn::conv::Conv2d;
use crate::nn::ops::max_pool2d;
use crate::nn::params::{Init, Params};
use crate::nn::tensor_files::TensorFiles;
use candle_core::{DType, Device, Module, Tensor, D};
use std::path::Path;

/// The backbone of an LPIPS model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LpipsNet {
    /// AlexNet features (taps relu1…relu5; channels 64, 192, 384, 256, 256). The package default.
    Alex,
    /// VGG16 features (taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; 64 … 512 channels).
    Vgg,
}

/// One step of a backbone's feature stack, in torchvision's `features` order.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Convolution at `features[index]`: (index, in, out, kernel, stride, padding), then ReLU.
    Conv(usize, usize, usize, usize, usize, usize),
    /// Max-pooling (window, stride).
    Pool(usize, usize),
    /// The last ReLU output is an LPIPS layer.
    Tap,
}

impl LpipsNet {
    fn steps(self) -> Vec<Step> {
        use Step::*;
        match self {
            Self::Alex => vec![
                Conv(0, 3, 64, 11, 4, 2),
                Tap,
                Pool(3, 2),
                Conv(3, 64, 192, 5, 1, 2),
                Tap,
                Pool(3, 2),
                Conv(6, 192, 384, 3, 1, 1),
                Tap,
                Conv(8, 384, 256, 3, 1, 1),
                Tap,
                Conv(10, 256, 256, 3, 1, 1),
                Tap,
            ],
            Self::Vgg => {
                let mut s = Vec::new();
                let mut idx = 0;
                let mut inp = 3;
                for (block, (out, convs)) in [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
                    .into_iter()
                    .enumerate()
                {
                    if block > 0 {
                        s.push(Pool(2, 2));
                        idx += 1;
                    }
                    for _ in 0..convs {
                        s.push(Conv(idx, inp, out, 3, 1, 1));
                        idx += 2; // conv + ReLU
                        inp = out;
                    }
                    s.push(Tap);
                }
                s
            }
        }
    }

    /// The `slice<s>` of the `lpips` package that holds `features[index]`.
    fn slice_of(self, index: usize) -> usize {
        let ends: &[usize] = match self {
            Self::Alex => &[2, 5, 8, 10, 12],
            Self::Vgg => &[4, 9, 16, 23, 30],
        };
        ends.iter()
            .position(|&e| index < e)
            .unwrap_or(ends.len() - 1)
            + 1
    }

    /// Channels of the five tapped layers.
    pub fn channels(self) -> [usize; 5] {
        match self {
            Self::Alex => [64, 192, 384, 256, 256],
            Self::Vgg => [64, 128, 256, 512, 512],
        }
    }

    /// Smallest image side the feature stack accepts (every layer keeps at least one pixel,
    /// every pooling window fits).
    pub fn min_size(self) -> usize {
        match self {
            Self::Alex => 31,
            Self::Vgg => 16,
        }
    }
}

impl std::fmt::Display for LpipsNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Alex => "alex",
            Self::Vgg => "vgg",
        })
    }
}

/// An LPIPS model with frozen weights. Gradients flow to the inputs only (a training loss).
pub struct Lpips {
    net: LpipsNet,
    steps: Vec<Step>,
    convs: Vec<Conv2d>,
    /// `[1, C_l, 1, 1]` per tapped layer.
    lins: Vec<Tensor>,
    shift: Tensor,
    scale: Tensor,
}

const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];

impl Lpips {
    /// Reads the weights of `path` (see the module doc for the names) and recognises the net.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let files = TensorFiles::load(&[path.to_path_buf()], device)?;
        let net = match files
            .get("net.slice1.0.weight")
            .map(|(t, _)| t.dims().to_vec())
        {
            Some(d) if d == [64, 3, 11, 11] => LpipsNet::Alex,
            Some(d) if d == [64, 3, 3, 3] => LpipsNet::Vgg,
            Some(d) => {
                return Err(Error::invalid(format!(
                    "{}: `net.slice1.0.weight` has shape {d:?}; LPIPS weights of AlexNet have \
                     [64, 3, 11, 11], of VGG16 [64, 3, 3, 3]",
                    path.display()
                )))
            }
            None => {
                return Err(Error::invalid(format!(
                    "{}: no `net.slice1.0.weight`; expected the tensors of \
                     lpips.LPIPS(net='alex'|'vgg').state_dict() (tools/export_lpips_weights.py)",
                    path.display()
                )))
            }
        };
        Self::from_params(&Params::from_files(files, device), net)
    }

    /// Builds the model from a parameter store with the `lpips` package's names.
    pub fn from_params(p: &Params, net: LpipsNet) -> Result<Self> {
        let steps = net.steps();
        let mut convs = Vec::new();
        for s in &steps {
            if let Step::Conv(j, inp, out, k, stride, pad) = *s {
                let pc = p.pp(format!("net.slice{}.{j}", net.slice_of(j)));
                convs.push(Conv2d {
                    weight: pc.get(
                        &[out, inp, k, k],
                        "weight",
                        Init::torch_default(inp * k * k),
                    )?,
                    bias: Some(pc.get(&[out], "bias", Init::torch_default(inp * k * k))?),
                    stride,
                    padding: pad,
                });
            }
        }
        let lins = net
            .channels()
            .iter()
            .enumerate()
            .map(|(l, &c)| {
                p.get(
                    &[1, c, 1, 1],
                    &format!("lin{l}.model.1.weight"),
                    Init::Zeros,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let dev = p.device();
        let dtype = p.dtype();
        let col = |v: [f32; 3]| -> Result<Tensor> {
            Ok(Tensor::new(&v, dev)?
                .to_dtype(dtype)?
                .reshape((1, 3, 1, 1))?)
        };
        Ok(Self {
            net,
            steps,
            convs,
            lins,
            shift: col(SHIFT)?,
            scale: col(SCALE)?,
        })
    }

    /// Which backbone.
    pub fn net(&self) -> LpipsNet {
        self.net
    }

    /// The five unit-normalised feature maps of `x: [B, 3, H, W]` in [-1, 1].
    fn features(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let (_, c, h, w) = x.dims4()?;
        let min = self.net.min_size();
        if c != 3 || h < min || w < min {
            return Err(Error::invalid(format!(
                "LPIPS ({}) needs RGB images of at least {min}x{min} pixels, got {c} channels at {h}x{w}",
                self.net
            )));
        }
        let mut h = x.broadcast_sub(&self.shift)?.broadcast_div(&self.scale)?;
        let mut convs = self.convs.iter();
        let mut taps = Vec::with_capacity(5);
        for s in &self.steps {
            match *s {
                Step::Conv(..) => {
                    h = convs
                        .next()
                        .expect("one conv per step")
                        .forward(&h)?
                        .relu()?
                }
                Step::Pool(k, stride) => h = max_pool2d(&h, k, stride)?,
                Step::Tap => {
                    // `x / (‖x‖ + 1e-10)` over channels as the package; the 1e-20 under the root
                    // keeps the gradient finite where a whole feature vector is zero (dead
                    // ReLUs), and changes no value at f32 precision.
                    let norm = (h.sqr()?.sum_keepdim(1)? + 1e-20)?.sqrt()?;
                    taps.push(h.broadcast_div(&(norm + 1e-10)?)?);
                }
            }
        }
        Ok(taps)
    }

    /// The per-layer maps `d_l: [B, 1, h_l, w_l]` between `x0` and `x1: [B, 3, H, W]`; `x0` is
    /// either a batch of the same shape or one image `[1, 3, H, W]` compared with every row of
    /// `x1` (its features are then computed once).
    fn layer_maps(&self, x0: &Tensor, x1: &Tensor) -> Result<Vec<Tensor>> {
        let (d0, d1) = (x0.dims(), x1.dims());
        let one_reference = d0.len() == 4 && d0[0] == 1 && d0[1..] == d1[1..];
        if d0 != d1 && !one_reference {
            return Err(Error::invalid(format!(
                "LPIPS of images of shapes {d0:?} and {d1:?}"
            )));
        }
        let f0 = self.features(x0)?;
        let f1 = self.features(x1)?;
        f0.iter()
            .zip(&f1)
            .zip(&self.lins)
            .map(|((a, b), lin)| {
                Ok(a.broadcast_sub(b)?
                    .sqr()?
                    .broadcast_mul(lin)?
                    .sum_keepdim(1)?)
            })
            .collect()
    }

    /// LPIPS of each image pair: `x0, x1: [B, 3, H, W]` in [-1, 1] (or `x0: [1, 3, H, W]` against
    /// every row of `x1`) → `[B]`. Differentiable in both inputs.
    pub fn distance(&self, x0: &Tensor, x1: &Tensor) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for d in self.layer_maps(x0, x1)? {
            let m = d.flatten_from(1)?.mean(D::Minus1)?;
            total = Some(match total {
                None => m,
                Some(t) => (t + m)?,
            });
        }
        Ok(total.expect("five layers"))
    }

    /// The spatial LPIPS map of each pair, `[B, H, W]` as row-major f32 per image (the package's
    /// `spatial=True`); `x0` may be one image compared with every row of `x1`. Not differentiable
    /// (computed on the host).
    pub fn spatial_maps(&self, x0: &Tensor, x1: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (b, _, h, w) = x1.dims4()?;
        let mut out = vec![vec![0f32; h * w]; b];
        for d in self.layer_maps(x0, x1)? {
            let (_, _, lh, lw) = d.dims4()?;
            let v: Vec<Vec<f32>> = d.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2()?;
            for (acc, m) in out.iter_mut().zip(&v) {
                let up = crate::eval::localisation::predict::resize_bilinear(m, lh, lw, h, w);
                for (a, u) in acc.iter_mut().zip(up) {
                    *a += u;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_steps_follow_torchvision_indices() {
        // AlexNet convs at features 0, 3, 6, 8, 10; VGG16 at 0 2 | 5 7 | 10 12 14 | 17 19 21 | 24 26 28.
        let convs = |n: LpipsNet| -> Vec<(usize, usize)> {
            n.steps()
                .iter()
                .filter_map(|s| match s {
                    Step::Conv(j, ..) => Some((*j, n.slice_of(*j))),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            convs(LpipsNet::Alex),
            vec![(0, 1), (3, 2), (6, 3), (8, 4), (10, 5)]
        );
        let vgg = convs(LpipsNet::Vgg);
        assert_eq!(vgg.len(), 13);
        assert_eq!(vgg[1], (2, 1));
        assert_eq!(vgg[2], (5, 2));
        assert_eq!(vgg[4], (10, 3));
        assert_eq!(vgg[7], (17, 4));
        assert_eq!(vgg[12], (28, 5));
        for n in [LpipsNet::Alex, LpipsNet::Vgg] {
            let taps = n.steps().iter().filter(|s| matches!(s, Step::Tap)).count();
            assert_eq!(taps, 5);
        }
    }
}
