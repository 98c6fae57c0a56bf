//! AnomalySD inference (METHODS.md B.4) for one image at the model's size:
//!
//! 1. **Multi-scale masks**: for every scale k of `scales`, every cell of the k × k grid is
//!    repainted with that cell masked — all cells of all scales in batches of one inpainting
//!    call each ([`StableDiffusion::inpaint_batch`], partial denoising from `strength`·T, the same
//!    start noise for every cell); inside each cell, the distance between input and repainting
//!    ([`super::distance`]) is that scale's map `S^(k)`; `S_ms` is their pixel-wise harmonic mean.
//! 2. **Prototype-guided mask**: patch features of the image ([`super::features`]) against the
//!    prototypes of the k normal shots ([`super::prototypes`]) give a deviation map; patches above
//!    the shots' own `pg_quantile` self-distance form the mask `M_p` (dilated), which is repainted
//!    once; `S_pg` is the distance inside `M_p` (0 elsewhere, and everywhere when `M_p` is empty).
//! 3. `S = (1 − α)·S_ms + α·S_pg`, smoothed; image score = max or top-k mean of `S`.
//!
//! The PatchCore-style baseline (`knn`) is the deviation map itself, on the same features.

use super::distance::{blur_image, harmonic_mean, Distance, DistanceMeter};
use super::features::{unet_features, FeatureOptions};
use super::masks::{grid_cells, grid_masks};
use super::prototypes::{self_distances, PrototypeBank};
use crate::data::mask_ops::{BinaryMask, ScalarMap};
use crate::error::{Error, Result};
use crate::eval::localisation::predict::resize_bilinear;
use crate::io::image_tensor::{rgb_to_tensor, tensor_to_rgb};
use crate::sd::noise::SeededNoise;
use crate::sd::pipeline::{SampleOptions, StableDiffusion};
use crate::sd::scheduler::SchedulerKind;
use candle_core::{DType, Tensor};
use image::RgbImage;

/// How an anomaly map becomes an image score.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageScore {
    /// The map's maximum.
    Max,
    /// Mean of the highest `fraction` of pixels (at least one).
    TopK(f64),
}

impl ImageScore {
    /// The score of a map.
    pub fn of(&self, map: &[f32]) -> f32 {
        match *self {
            ImageScore::Max => map.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
            ImageScore::TopK(f) => {
                let mut v = map.to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                let k = ((v.len() as f64 * f).ceil() as usize).clamp(1, v.len().max(1));
                v[..k].iter().sum::<f32>() / k as f32
            }
        }
    }
}

impl std::str::FromStr for ImageScore {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "max" {
            return Ok(Self::Max);
        }
        if let Some(f) = s.strip_prefix("top:") {
            if let Ok(f) = f.parse::<f64>() {
                if f > 0.0 && f <= 1.0 {
                    return Ok(Self::TopK(f));
                }
            }
        }
        Err(Error::invalid(format!(
            "unknown image score `{s}` (max, or top:F for the mean of the highest fraction F of pixels)"
        )))
    }
}

/// Every setting of inference; the defaults and why are in the README's AnomalySD section.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetectSettings {
    /// λ: share of the schedule run (partial denoising from λ·T).
    pub strength: f64,
    /// Scheduler steps of a full run (λ·steps are run).
    pub steps: usize,
    /// Sampler.
    pub scheduler: SchedulerKind,
    /// Grid scales K.
    pub scales: Vec<usize>,
    /// Per-pixel distance.
    pub distance: Distance,
    /// LPIPS network weights for `distance = lpips` (none by default: nothing is downloaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lpips_weights: Option<std::path::PathBuf>,
    /// Gaussian σ (pixels at model size) applied to input and repainting before the distance.
    pub image_blur: f32,
    /// Gaussian σ (pixels at model size) of each distance map.
    pub blur: f32,
    /// α: weight of the prototype-guided map.
    pub alpha: f64,
    /// Gaussian σ (pixels at model size) of the final map.
    pub map_blur: f32,
    /// Image score.
    pub score: ImageScore,
    /// Features for prototypes.
    pub features: FeatureOptions,
    /// Quantile of the shots' self-distances above which a patch joins the prototype mask.
    pub pg_quantile: f64,
    /// Dilation of the prototype mask, in pixels at model size.
    pub pg_dilate: usize,
    /// Inpaintings per UNet call (memory bound).
    pub batch: usize,
    /// Seed of the start noise (the same for every image and cell).
    pub seed: u64,
    /// Classifier-free guidance (1 = off: repaint with the prompt only).
    pub guidance: f64,
}

impl Default for DetectSettings {
    fn default() -> Self {
        Self {
            strength: 0.5,
            steps: 10,
            scheduler: SchedulerKind::Ddim,
            scales: vec![2, 4],
            distance: Distance::Mix,
            lpips_weights: None,
            image_blur: 0.0,
            blur: 1.0,
            alpha: 0.1,
            map_blur: 2.0,
            score: ImageScore::TopK(0.05),
            features: FeatureOptions::default(),
            pg_quantile: 0.99,
            pg_dilate: 2,
            batch: 32,
            seed: 0,
            guidance: 1.0,
        }
    }
}

/// The k normal shots of a category, ready for prototype guidance.
pub struct Shots {
    /// Patch prototypes.
    pub bank: PrototypeBank,
    /// Deviation above which a patch is masked.
    pub threshold: f32,
    /// Number of shots.
    pub count: usize,
}

/// The multi-scale branch's result for one image (maps at model size, row-major).
pub struct MultiScale {
    /// `S_ms`.
    pub map: Vec<f32>,
    /// `S^(k)` per scale, in the order of the settings.
    pub per_scale: Vec<Vec<f32>>,
    /// The "normal" image: every pixel from the repainting of its finest-scale cell.
    pub normal: RgbImage,
    /// Inpaintings run.
    pub inpaintings: usize,
}

/// The prototype branch's result for one image.
pub struct PrototypeGuided {
    /// Nearest-prototype deviation, bilinearly upsampled to model size (the `knn` map, unsmoothed).
    pub deviation: Vec<f32>,
    /// `M_p`.
    pub mask: Vec<bool>,
    /// `S_pg`.
    pub map: Vec<f32>,
    /// Inpaintings run (0 or 1).
    pub inpaintings: usize,
}

/// An inpainting model with its settings, for one category prompt.
pub struct Detector<'a> {
    sd: &'a StableDiffusion,
    settings: DetectSettings,
    prompt: String,
    text: Tensor,
    size: usize,
    meter: DistanceMeter,
}

impl<'a> Detector<'a> {
    /// A detector for images of one category (`prompt` is its training prompt) at `size` pixels.
    pub fn new(
        sd: &'a StableDiffusion,
        prompt: &str,
        size: usize,
        settings: DetectSettings,
    ) -> Result<Self> {
        if !(settings.strength > 0.0 && settings.strength <= 1.0) {
            return Err(Error::invalid(format!(
                "strength λ must be in (0, 1], got {}",
                settings.strength
            )));
        }
        if !(0.0..=1.0).contains(&settings.alpha) {
            return Err(Error::invalid(format!(
                "α must be in [0, 1], got {}",
                settings.alpha
            )));
        }
        if settings.scales.is_empty() {
            return Err(Error::invalid("at least one grid scale is needed"));
        }
        for &k in &settings.scales {
            grid_cells(k, size, size)?;
        }
        let meter = DistanceMeter::new(
            settings.distance,
            settings.lpips_weights.as_deref(),
            &sd.device,
        )?;
        let text = sd.encode_text(&[prompt])?;
        Ok(Self {
            sd,
            settings,
            prompt: prompt.to_string(),
            text,
            size,
            meter,
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &DetectSettings {
        &self.settings
    }

    /// The image side the detector works at.
    pub fn size(&self) -> usize {
        self.size
    }

    fn resize(&self, img: &RgbImage) -> RgbImage {
        if img.dimensions() == (self.size as u32, self.size as u32) {
            return img.clone();
        }
        image::imageops::resize(
            img,
            self.size as u32,
            self.size as u32,
            image::imageops::FilterType::Triangle,
        )
    }

    /// Repaints `image` (model size) under each mask of `masks: [B, 1, H, W]`, in batches.
    fn inpaint(&self, x: &Tensor, masks: &Tensor) -> Result<Vec<Vec<f32>>> {
        let o = SampleOptions {
            prompt: self.prompt.clone(),
            steps: self.settings.steps,
            guidance: self.settings.guidance,
            scheduler: Some(self.settings.scheduler),
            ..Default::default()
        };
        let b = masks.dim(0)?;
        let mut out = Vec::with_capacity(b);
        let mut i = 0;
        while i < b {
            let n = self.settings.batch.max(1).min(b - i);
            // A fresh source per chunk: every chunk starts from the same noise, so results do not
            // depend on the batch size (up to float rounding: batched kernels round differently).
            let mut noise = SeededNoise::new(self.settings.seed);
            let lat = self.sd.inpaint_batch(
                &o,
                x,
                &masks.narrow(0, i, n)?,
                self.settings.strength,
                &mut noise,
                &mut |_, _| {},
            )?;
            let y = self.sd.decode(&lat)?;
            for r in 0..n {
                out.push(y.get(r)?.flatten_all()?.to_vec1::<f32>()?);
            }
            i += n;
        }
        Ok(out)
    }

    /// The multi-scale branch.
    pub fn multi_scale(&self, image: &RgbImage) -> Result<MultiScale> {
        let img = self.resize(image);
        let s = self.size;
        let x = rgb_to_tensor(&img, &self.sd.device)?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let masks = grid_masks(&self.settings.scales, s, s, &self.sd.device)?;
        let outs = self.inpaint(&x, &masks)?;
        let sigma = self.settings.image_blur;
        let xb = blur_image(&xv, s, s, sigma);
        // Each cell's distance is measured on the whole image (the perceptual kinds see the
        // cell's context) and kept inside the cell.
        let outs_b: Vec<Vec<f32>> = outs.iter().map(|o| blur_image(o, s, s, sigma)).collect();
        let dists = self.meter.maps(&xb, &outs_b, s, s, self.settings.blur)?;
        let mut per_scale = Vec::new();
        let mut normal = vec![0f32; 3 * s * s];
        let mut r = 0;
        for &k in &self.settings.scales {
            let mut map = vec![0f32; s * s];
            for cell in grid_cells(k, s, s)? {
                let d = &dists[r];
                for y in cell.y0..cell.y1 {
                    for xx in cell.x0..cell.x1 {
                        map[y * s + xx] = d[y * s + xx];
                        for c in 0..3 {
                            normal[c * s * s + y * s + xx] = outs[r][c * s * s + y * s + xx];
                        }
                    }
                }
                r += 1;
            }
            per_scale.push(map);
        }
        let fused = harmonic_mean(&per_scale)?;
        let normal = tensor_to_rgb(&Tensor::from_vec(normal, (1, 3, s, s), &self.sd.device)?)?
            .pop()
            .expect("one image");
        Ok(MultiScale {
            map: fused,
            per_scale,
            normal,
            inpaintings: r,
        })
    }

    /// Patch features `[N, C, h, w]` of images at model size.
    fn features(&self, images: &[RgbImage]) -> Result<Tensor> {
        let xs: Vec<Tensor> = images
            .iter()
            .map(|i| rgb_to_tensor(&self.resize(i), &self.sd.device))
            .collect::<Result<_>>()?;
        unet_features(
            self.sd,
            &Tensor::cat(&xs, 0)?,
            &self.text,
            &self.settings.features,
        )
    }

    /// Prototypes and threshold from the normal shots.
    pub fn shots(&self, shots: &[RgbImage]) -> Result<Shots> {
        if shots.is_empty() {
            return Err(Error::invalid(
                "prototype guidance needs at least one normal shot",
            ));
        }
        let f = self.features(shots)?;
        let bank = PrototypeBank::new(&f)?;
        let mut self_d = self_distances(&f, 1)?;
        self_d.sort_by(f32::total_cmp);
        let q = self.settings.pg_quantile.clamp(0.0, 1.0);
        let idx = ((self_d.len() - 1) as f64 * q).round() as usize;
        Ok(Shots {
            bank,
            threshold: self_d[idx],
            count: shots.len(),
        })
    }

    /// The prototype-guided branch: the deviation map and mask, and — with `repaint` — one
    /// inpainting of the mask when it is not empty (`S_pg`; without `repaint` it stays 0, for
    /// callers that only need the deviation, such as the nearest-neighbour baseline).
    pub fn prototype(
        &self,
        shots: &Shots,
        image: &RgbImage,
        repaint: bool,
    ) -> Result<PrototypeGuided> {
        let img = self.resize(image);
        let s = self.size;
        let f = self.features(std::slice::from_ref(&img))?;
        let (_, _, fh, fw) = f.dims4()?;
        let dev = shots.bank.deviation_maps(&f)?.pop().expect("one map");
        let deviation = resize_bilinear(&dev, fh, fw, s, s);
        // Patches above the threshold, nearest-upsampled, then dilated.
        let patch_mask: Vec<bool> = dev.iter().map(|&d| d > shots.threshold).collect();
        let mut mask = vec![false; s * s];
        for y in 0..s {
            for x in 0..s {
                mask[y * s + x] = patch_mask[(y * fh / s) * fw + x * fw / s];
            }
        }
        let mask = BinaryMask {
            width: s,
            height: s,
            data: mask,
        }
        .dilated(self.settings.pg_dilate)
        .data;
        let mut map = vec![0f32; s * s];
        let mut inpaintings = 0;
        if repaint && mask.iter().any(|&m| m) {
            let x = rgb_to_tensor(&img, &self.sd.device)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let m: Vec<f32> = mask.iter().map(|&b| f32::from(u8::from(b))).collect();
            let m = Tensor::from_vec(m, (1, 1, s, s), &self.sd.device)?.to_dtype(DType::F32)?;
            let out = self.inpaint(&x, &m)?.pop().expect("one inpainting");
            let sigma = self.settings.image_blur;
            let d = self
                .meter
                .maps(
                    &blur_image(&xv, s, s, sigma),
                    &[blur_image(&out, s, s, sigma)],
                    s,
                    s,
                    self.settings.blur,
                )?
                .pop()
                .expect("one map");
            for i in 0..s * s {
                if mask[i] {
                    map[i] = d[i];
                }
            }
            inpaintings = 1;
        }
        Ok(PrototypeGuided {
            deviation,
            mask,
            map,
            inpaintings,
        })
    }

    /// `S = (1 − α)·S_ms + α·S_pg`, smoothed with `map_blur`.
    pub fn combine(&self, s_ms: &[f32], s_pg: &[f32], alpha: f64) -> Vec<f32> {
        let a = alpha as f32;
        let m: Vec<f32> = s_ms
            .iter()
            .zip(s_pg)
            .map(|(x, y)| (1.0 - a) * x + a * y)
            .collect();
        self.smooth(m)
    }

    /// Gaussian smoothing with `map_blur` at model size.
    pub fn smooth(&self, map: Vec<f32>) -> Vec<f32> {
        ScalarMap {
            width: self.size,
            height: self.size,
            data: map,
        }
        .gaussian_blur(self.settings.map_blur)
        .data
    }
}
