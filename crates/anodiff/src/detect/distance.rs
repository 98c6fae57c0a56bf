//! Distances between an image and its inpainting, per pixel. METHODS.md B.4 uses a perceptual,
//! LPIPS-like distance; three weight-free kinds are the defaults, the learned one runs only with
//! weights the user supplies:
//!
//! - `l2`: Euclidean distance of the RGB values in [-1, 1], divided by √3 (so in [0, 2]);
//! - `ssim`: (1 − SSIM) / 2 of the grey images, SSIM over a Gaussian window (σ 1.5 px), constants
//!   for the value range 2 — sensitive to structure more than to brightness;
//! - `mix`: the mean of the two;
//! - `lpips`: the spatial LPIPS map ([`crate::eval::lpips`]) with the AlexNet or VGG16 weights of
//!   `--lpips-weights FILE`. Needs images of at least 31 (AlexNet) / 16 (VGG) pixels.
//!
//! Every map is then smoothed with a Gaussian of `blur` pixels. [`DistanceMeter`] measures any
//! kind; [`distance_map`] the weight-free ones.

use crate::data::mask_ops::ScalarMap;
use crate::error::{Error, Result};
use crate::eval::lpips::Lpips;
use candle_core::{Device, Tensor};
use std::path::Path;

/// Which per-pixel distance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// RGB Euclidean distance / √3.
    L2,
    /// (1 − SSIM) / 2 on grey.
    Ssim,
    /// Mean of `l2` and `ssim`.
    Mix,
    /// Spatial LPIPS with user-supplied weights.
    Lpips,
}

impl std::fmt::Display for Distance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::L2 => "l2",
            Self::Ssim => "ssim",
            Self::Mix => "mix",
            Self::Lpips => "lpips",
        })
    }
}

impl std::str::FromStr for Distance {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l2" => Ok(Self::L2),
            "ssim" => Ok(Self::Ssim),
            "mix" => Ok(Self::Mix),
            "lpips" => Ok(Self::Lpips),
            _ => Err(Error::invalid(format!(
                "unknown distance `{s}` (l2, ssim, mix, or lpips with --lpips-weights)"
            ))),
        }
    }
}

/// A distance ready to measure: its kind and, for `lpips`, the loaded network.
pub struct DistanceMeter {
    kind: Distance,
    lpips: Option<Lpips>,
    device: Device,
}

/// Image pairs per LPIPS forward pass (bounds memory at 512 px).
const LPIPS_BATCH: usize = 8;

impl DistanceMeter {
    /// A meter of `kind`. `lpips` needs `lpips_weights`; weights with another kind are refused
    /// rather than silently ignored.
    pub fn new(kind: Distance, lpips_weights: Option<&Path>, device: &Device) -> Result<Self> {
        let lpips = match (kind, lpips_weights) {
            (Distance::Lpips, Some(p)) => Some(Lpips::load(p, device)?),
            (Distance::Lpips, None) => {
                return Err(Error::invalid(
                    "distance `lpips` needs LPIPS network weights (--lpips-weights FILE: the \
                     safetensors of lpips.LPIPS(net='alex'|'vgg').state_dict(), see \
                     tools/export_lpips_weights.py); the weight-free kinds are l2, ssim, mix",
                ))
            }
            (k, Some(p)) => {
                return Err(Error::invalid(format!(
                    "LPIPS weights {} given but the distance is `{}`; choose --distance lpips",
                    p.display(),
                    k
                )))
            }
            (_, None) => None,
        };
        Ok(Self {
            kind,
            lpips,
            device: device.clone(),
        })
    }

    /// The kind measured.
    pub fn kind(&self) -> Distance {
        self.kind
    }

    /// The maps `h × w` between `reference` and each of `others` (`[3, h, w]` row-major values in
    /// [-1, 1]), each smoothed with `blur`.
    pub fn maps(
        &self,
        reference: &[f32],
        others: &[Vec<f32>],
        h: usize,
        w: usize,
        blur: f32,
    ) -> Result<Vec<Vec<f32>>> {
        let Some(net) = &self.lpips else {
            return others
                .iter()
                .map(|o| distance_map(reference, o, h, w, self.kind, blur))
                .collect();
        };
        let n = 3 * h * w;
        if reference.len() != n || others.iter().any(|o| o.len() != n) {
            return Err(Error::invalid(format!(
                "LPIPS distance: images must have 3x{h}x{w} values"
            )));
        }
        let x0 = Tensor::from_slice(reference, (1, 3, h, w), &self.device)?;
        let mut out = Vec::with_capacity(others.len());
        for chunk in others.chunks(LPIPS_BATCH) {
            let b = chunk.len();
            let x1 = Tensor::from_vec(chunk.concat(), (b, 3, h, w), &self.device)?;
            for m in net.spatial_maps(&x0, &x1)? {
                out.push(
                    ScalarMap {
                        width: w,
                        height: h,
                        data: m,
                    }
                    .gaussian_blur(blur)
                    .data,
                );
            }
        }
        Ok(out)
    }
}

/// The distance map `h × w` between two images given as `[3, h, w]` row-major values in [-1, 1],
/// for the weight-free kinds (`lpips` needs a [`DistanceMeter`]).
pub fn distance_map(
    a: &[f32],
    b: &[f32],
    h: usize,
    w: usize,
    kind: Distance,
    blur: f32,
) -> Result<Vec<f32>> {
    if a.len() != 3 * h * w || b.len() != 3 * h * w {
        return Err(Error::invalid(format!(
            "distance_map: images of {} and {} values for 3x{h}x{w}",
            a.len(),
            b.len()
        )));
    }
    let n = h * w;
    let l2 = || -> Vec<f32> {
        (0..n)
            .map(|i| {
                let s: f32 = (0..3).map(|c| (a[c * n + i] - b[c * n + i]).powi(2)).sum();
                (s / 3.0).sqrt()
            })
            .collect()
    };
    let d = match kind {
        Distance::L2 => l2(),
        Distance::Ssim => ssim_distance(a, b, h, w),
        Distance::Mix => l2()
            .iter()
            .zip(ssim_distance(a, b, h, w))
            .map(|(x, y)| 0.5 * (x + y))
            .collect(),
        Distance::Lpips => {
            return Err(Error::invalid(
                "distance `lpips` needs its network: measure it with a DistanceMeter",
            ))
        }
    };
    Ok(ScalarMap {
        width: w,
        height: h,
        data: d,
    }
    .gaussian_blur(blur)
    .data)
}

/// Each channel of a `[3, h, w]` row-major image smoothed with a Gaussian of `sigma` pixels. Applied
/// to input and repainting before the distance (`DetectSettings::image_blur`) it cancels zero-mean
/// grain of the repainting, at the price of washing out thin defects; off by default, because on
/// the synthetic validation set σ = 1 and 2 lowered pixel AUROC (BENCHMARKS.md).
pub fn blur_image(x: &[f32], h: usize, w: usize, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return x.to_vec();
    }
    x.chunks(h * w)
        .flat_map(|c| {
            ScalarMap {
                width: w,
                height: h,
                data: c.to_vec(),
            }
            .gaussian_blur(sigma)
            .data
        })
        .collect()
}

/// (1 − SSIM) / 2 per pixel of the channel-mean grey images.
fn ssim_distance(a: &[f32], b: &[f32], h: usize, w: usize) -> Vec<f32> {
    let n = h * w;
    let grey = |x: &[f32]| -> Vec<f32> {
        (0..n)
            .map(|i| (x[i] + x[n + i] + x[2 * n + i]) / 3.0)
            .collect()
    };
    let (ga, gb) = (grey(a), grey(b));
    let blur = |v: Vec<f32>| {
        ScalarMap {
            width: w,
            height: h,
            data: v,
        }
        .gaussian_blur(1.5)
        .data
    };
    let mu_a = blur(ga.clone());
    let mu_b = blur(gb.clone());
    let aa = blur(ga.iter().map(|x| x * x).collect());
    let bb = blur(gb.iter().map(|x| x * x).collect());
    let ab = blur(ga.iter().zip(&gb).map(|(x, y)| x * y).collect());
    // Constants of the SSIM paper for a value range L = 2.
    let (c1, c2) = ((0.01f32 * 2.0).powi(2), (0.03f32 * 2.0).powi(2));
    (0..n)
        .map(|i| {
            let (ma, mb) = (mu_a[i], mu_b[i]);
            let va = (aa[i] - ma * ma).max(0.0);
            let vb = (bb[i] - mb * mb).max(0.0);
            let cov = ab[i] - ma * mb;
            let s = ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            ((1.0 - s) / 2.0).clamp(0.0, 1.0)
        })
        .collect()
}

/// Harmonic mean of maps of equal length, pixel by pixel: `(mean_k 1/S_k)^-1` (METHODS.md B.4's
/// multi-scale fusion). A pixel where any map is 0 (or negative) fuses to 0, the limit of the
/// formula: one scale that repaints the pixel perfectly vetoes it. Errors on no maps or unequal
/// lengths.
pub fn harmonic_mean(maps: &[Vec<f32>]) -> Result<Vec<f32>> {
    let first = maps
        .first()
        .ok_or_else(|| Error::invalid("harmonic mean of no maps"))?;
    if maps.iter().any(|m| m.len() != first.len()) {
        return Err(Error::invalid("harmonic mean of maps of different sizes"));
    }
    let k = maps.len() as f64;
    Ok((0..first.len())
        .map(|i| {
            if maps.iter().any(|m| m[i] <= 0.0) {
                return 0.0;
            }
            let inv: f64 = maps.iter().map(|m| 1.0 / m[i] as f64).sum();
            (k / inv) as f32
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmonic_mean_values_and_zeros() {
        let m = harmonic_mean(&[vec![1.0, 2.0, 0.0, 4.0], vec![1.0, 6.0, 5.0, 4.0]]).unwrap();
        assert_eq!(m[0], 1.0);
        assert!((m[1] - 3.0).abs() < 1e-6); // 2 / (1/2 + 1/6) = 3
        assert_eq!(m[2], 0.0);
        assert_eq!(m[3], 4.0);
        // Never above the arithmetic mean, equal for equal inputs.
        let one = harmonic_mean(&[vec![0.3, 0.7]]).unwrap();
        assert_eq!(one, vec![0.3, 0.7]);
        assert!(harmonic_mean(&[]).is_err());
        assert!(harmonic_mean(&[vec![1.0], vec![1.0, 2.0]]).is_err());
    }

    #[test]
    fn distances_are_zero_on_equal_images_and_grow_with_change() {
        let (h, w) = (12, 12);
        let a: Vec<f32> = (0..3 * h * w)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        for kind in [Distance::L2, Distance::Ssim, Distance::Mix] {
            let d0 = distance_map(&a, &a, h, w, kind, 0.0).unwrap();
            assert!(d0.iter().all(|&v| v.abs() < 1e-4), "{kind:?}");
            let mut b = a.clone();
            // Change a 4×4 block in every channel.
            for c in 0..3 {
                for y in 4..8 {
                    for x in 4..8 {
                        b[c * h * w + y * w + x] = -a[c * h * w + y * w + x];
                    }
                }
            }
            let d = distance_map(&a, &b, h, w, kind, 0.0).unwrap();
            let inside = d[6 * w + 6];
            let far = d[0];
            assert!(
                inside > 0.05 && inside > 10.0 * far.max(1e-4),
                "{kind:?}: {inside} vs {far}"
            );
        }
        let l2 = distance_map(
            &a,
            &a.iter().map(|v| v + 0.5).collect::<Vec<_>>(),
            h,
            w,
            Distance::L2,
            0.0,
        )
        .unwrap();
        assert!(l2.iter().all(|&v| (v - 0.5).abs() < 1e-5));
        assert!(distance_map(&a[..3], &a, h, w, Distance::L2, 0.0).is_err());
    }
}
