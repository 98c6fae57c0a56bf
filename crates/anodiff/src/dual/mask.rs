//! Masks from generated anomaly-part images (METHODS.md A.6), and automatic rejection of failed
//! pairs.
//!
//! The part branch is trained on `I ⊙ M` in [-1, 1], i.e. the defect on mid-grey (127.5 in
//! 0–255), so a generated part image should be grey except where the defect is. The default
//! [`DistanceMask`] reads the mask off directly, without weights:
//! 1. per-pixel distance from the fill value: Euclidean over RGB / √3, in grey levels; the
//!    outermost [`DistanceMaskOptions::border`] pixels count as fill;
//! 2. Gaussian smoothing ([`DistanceMaskOptions::sigma`]), which closes pinholes and quiets
//!    sampling noise;
//! 3. a threshold ([`Threshold`]): Otsu's split of the smoothed distances, never below
//!    a floor (so a flat grey image yields an empty mask instead of
//!    thresholded noise), or a fixed level;
//! 4. connected regions smaller than [`DistanceMaskOptions::min_component`] pixels removed, and
//!    optionally holes filled.
//!
//! A learned segmenter can plug in later behind [`MaskExtractor`].
//!
//! [`judge`] rejects pairs the generator got wrong, with a [`Reason`]: an empty mask; a part
//! image that is not grey outside its mask (the part branch drew more than the defect, so the
//! mask cannot be trusted; "outside" skips the same edge ring the extractor treats as fill); a
//! defect far fainter than the real ones ([`defect_contrast`] below a share of the training parts'
//! median: the mask then outlines sampling grain that crossed the threshold, not a drawn defect);
//! or an area outside the range the real training masks span ([`AreaRange`], with a tolerance
//! factor).

use crate::data::mask_ops::{area_fraction, otsu, BinaryMask, ScalarMap};
use crate::error::{Error, Result};
use image::{GrayImage, RgbImage};

/// The grey of a part image outside its defect, 0–255: 0 in the [-1, 1] space the part branch
/// is trained in.
pub const PART_FILL: f32 = 127.5;

/// Turns a generated anomaly-part image into a binary mask (255 = defect), the image's size.
pub trait MaskExtractor: Send + Sync {
    /// The mask of `part`.
    fn extract(&self, part: &RgbImage) -> Result<GrayImage>;
}

/// How the smoothed distance map is thresholded (distances in grey levels, 0–255 scale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Otsu's threshold over the image's smoothed distances, but at least `floor`.
    Otsu {
        /// Lowest threshold used: distances up to this are generation noise, not defect.
        floor: f32,
    },
    /// A fixed threshold.
    Fixed(f32),
}

/// Settings of [`DistanceMask`].
#[derive(Debug, Clone, PartialEq)]
pub struct DistanceMaskOptions {
    /// The grey the part image is filled with outside the defect, 0–255 (0 in [-1, 1] space).
    pub fill: f32,
    /// Gaussian σ of the smoothing, in pixels (0 = none).
    pub sigma: f32,
    /// Threshold rule.
    pub threshold: Threshold,
    /// Connected (8-neighbour) regions smaller than this many pixels are removed.
    pub min_component: usize,
    /// Fill background regions enclosed by the mask.
    pub fill_holes: bool,
    /// Pixels this close to the image edge are treated as fill: UNets trained here with zero
    /// padding leave the outermost ring of a generated part image off-grey (mean distance 21.9
    /// grey levels against 7.3 inside, BENCHMARKS.md), which would put a frame into every mask.
    pub border: usize,
}

impl Default for DistanceMaskOptions {
    fn default() -> Self {
        Self {
            fill: PART_FILL,
            sigma: 1.0,
            threshold: Threshold::Otsu { floor: 12.0 },
            min_component: 4,
            fill_holes: true,
            border: 1,
        }
    }
}

/// A mask with the figures that produced it.
#[derive(Debug, Clone)]
pub struct Extraction {
    /// 255 = defect.
    pub mask: GrayImage,
    /// The threshold used on the smoothed distance.
    pub threshold: f32,
    /// The smoothed distance map.
    pub distance: ScalarMap,
}

/// The weight-free mask extractor (method in the module doc).
#[derive(Debug, Clone, Default)]
pub struct DistanceMask {
    opts: DistanceMaskOptions,
}

impl DistanceMask {
    /// An extractor with the given settings.
    pub fn new(opts: DistanceMaskOptions) -> Self {
        Self { opts }
    }

    /// The settings in use.
    pub fn options(&self) -> &DistanceMaskOptions {
        &self.opts
    }

    /// The mask with its threshold and smoothed distance map.
    pub fn extract_detailed(&self, part: &RgbImage) -> Result<Extraction> {
        if part.width() == 0 || part.height() == 0 {
            return Err(Error::invalid("mask extraction: the part image is empty"));
        }
        let o = &self.opts;
        let mut raw = distance_map(part, o.fill);
        let (w, h) = (raw.width, raw.height);
        for y in 0..h {
            for x in 0..w {
                if near_edge(x, y, w, h, o.border) {
                    raw.data[y * w + x] = 0.0;
                }
            }
        }
        let distance = raw.gaussian_blur(o.sigma);
        let threshold = match o.threshold {
            Threshold::Fixed(t) => t,
            Threshold::Otsu { floor } => otsu(&distance.data)
                .map_or(floor, |s| s.threshold)
                .max(floor),
        };
        let mut m = distance.above(threshold);
        m.remove_small(o.min_component.max(1));
        if o.fill_holes {
            m.fill_holes();
        }
        Ok(Extraction {
            mask: m.to_gray(),
            threshold,
            distance,
        })
    }
}

impl MaskExtractor for DistanceMask {
    fn extract(&self, part: &RgbImage) -> Result<GrayImage> {
        Ok(self.extract_detailed(part)?.mask)
    }
}

/// Whether pixel (x, y) of a `w`×`h` image lies within `border` pixels of its edge.
fn near_edge(x: usize, y: usize, w: usize, h: usize, border: usize) -> bool {
    x < border || y < border || x + border >= w || y + border >= h
}

/// Per-pixel distance of `img` from the grey `fill`: Euclidean over RGB / √3, in grey levels.
pub fn distance_map(img: &RgbImage, fill: f32) -> ScalarMap {
    ScalarMap::from_fn(img.width() as usize, img.height() as usize, |x, y| {
        let p = img.get_pixel(x as u32, y as u32);
        let d2: f32 = (0..3).map(|c| (p[c] as f32 - fill).powi(2)).sum();
        (d2 / 3.0).sqrt()
    })
}

/// How visible the defect of a part image is, as the extractor sees it: the mean of the
/// distance from the grey `fill`, Gaussian-smoothed with `sigma` (the extractor's), over the
/// mask's pixels (value ≥ 128), in grey levels. Smoothed, so that a thin defect drawn a little
/// softer than the real ones is compared like for like (a 1-px line keeps ~40 % of its contrast at
/// σ 1, blurred or not). `None` for an empty mask or sizes that differ.
pub fn defect_contrast(part: &RgbImage, mask: &GrayImage, fill: f32, sigma: f32) -> Option<f32> {
    if part.dimensions() != mask.dimensions() {
        return None;
    }
    distance_map(part, fill)
        .gaussian_blur(sigma)
        .mean_where(&BinaryMask::from_gray(mask, 128), true)
}

/// The part image `I ⊙ M`: `image` inside the mask (value ≥ 128), the grey `fill` (rounded)
/// outside.
pub fn part_image(image: &RgbImage, mask: &GrayImage, fill: f32) -> RgbImage {
    let grey = image::Rgb([fill.round() as u8; 3]);
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        if mask.get_pixel(x, y)[0] >= 128 {
            *image.get_pixel(x, y)
        } else {
            grey
        }
    })
}

/// The part image `I ⊙ M` of a real defect (mid-grey outside the mask), and [`defect_contrast`]
/// inside the mask `extractor` finds in it — the way a generated part is measured — or inside
/// the real mask when the extractor finds nothing.
pub fn real_part_contrast(
    image: &RgbImage,
    mask: &GrayImage,
    extractor: &DistanceMask,
) -> Result<Option<f32>> {
    let fill = extractor.options().fill;
    let part = part_image(image, mask, fill);
    let found = extractor.extract(&part)?;
    let m = if found.iter().any(|&v| v >= 128) {
        &found
    } else {
        mask
    };
    Ok(defect_contrast(&part, m, fill, extractor.options().sigma))
}

/// The range of defect areas (fractions of the image) a generated mask may have.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AreaRange {
    /// Smallest accepted area fraction.
    pub min: f64,
    /// Largest accepted area fraction.
    pub max: f64,
}

impl AreaRange {
    /// `[smallest / tolerance, largest × tolerance]` (capped at 1) over the non-empty training
    /// masks' area fractions. Give the masks at the geometry the generator was trained on
    /// (e.g. drawn from the `PairSampler`): a `DefectCrop` window holds a larger share of defect
    /// than the whole image. Errors when `tolerance` < 1 or no mask has a defect pixel.
    pub fn from_training_masks(masks: &[GrayImage], tolerance: f64) -> Result<Self> {
        let areas: Vec<f64> = masks.iter().map(area_fraction).collect();
        Self::from_areas(&areas, tolerance)
    }

    /// Like [`Self::from_training_masks`], from area fractions; zero areas are ignored.
    pub fn from_areas(areas: &[f64], tolerance: f64) -> Result<Self> {
        if !(tolerance >= 1.0 && tolerance.is_finite()) {
            return Err(Error::invalid(format!(
                "area range: tolerance {tolerance} must be a finite factor ≥ 1"
            )));
        }
        let nonzero = areas.iter().copied().filter(|&a| a > 0.0);
        let (lo, hi) = nonzero.fold((f64::INFINITY, 0f64), |(lo, hi), a| (lo.min(a), hi.max(a)));
        if hi == 0.0 {
            return Err(Error::invalid(
                "area range: no training mask has a defect pixel",
            ));
        }
        Ok(Self {
            min: lo / tolerance,
            max: (hi * tolerance).min(1.0),
        })
    }

    /// Whether `area` lies in the range (inclusive).
    pub fn contains(&self, area: f64) -> bool {
        (self.min..=self.max).contains(&area)
    }
}

/// Why a generated pair was rejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// The mask has no defect pixel.
    EmptyMask,
    /// The mask's area fraction is outside the accepted range.
    AreaOutOfRange {
        /// The mask's area fraction.
        area: f64,
        /// Smallest accepted.
        min: f64,
        /// Largest accepted.
        max: f64,
    },
    /// The part image is not flat grey outside the mask.
    PartNotFlat {
        /// Mean distance from the fill value over the pixels away from the mask, grey levels.
        outside_mean_distance: f32,
    },
    /// The defect inside the mask is far fainter than the real ones.
    FaintDefect {
        /// [`defect_contrast`] of the pair, grey levels.
        contrast: f32,
        /// The smallest accepted.
        min: f32,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::EmptyMask => write!(f, "empty mask"),
            Reason::AreaOutOfRange { area, min, max } => write!(
                f,
                "mask area {:.3} % outside the training range {:.3}–{:.3} %",
                100.0 * area,
                100.0 * min,
                100.0 * max
            ),
            Reason::PartNotFlat {
                outside_mean_distance,
            } => write!(
                f,
                "part image not grey outside the mask (mean distance \
                 {outside_mean_distance:.1} levels)"
            ),
            Reason::FaintDefect { contrast, min } => write!(
                f,
                "defect too faint: {contrast:.1} grey levels from the fill inside the mask, \
                 below {min:.1}"
            ),
        }
    }
}

/// The outcome of [`judge`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Keep the pair.
    Accepted,
    /// Drop it, and why.
    Rejected(Reason),
}

/// Settings of [`judge`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RejectOptions {
    /// Accepted area fractions; `None` skips the area check.
    pub area: Option<AreaRange>,
    /// Largest mean distance from `fill` (grey levels) allowed away from the mask.
    pub max_outside_distance: f32,
    /// Smallest [`defect_contrast`] accepted (grey levels); `None` skips the check.
    pub min_contrast: Option<f32>,
    /// Pixels within this many pixels of the mask are not counted as "outside" (the defect's
    /// soft edge).
    pub outside_margin: usize,
    /// The part image's fill grey, 0–255.
    pub fill: f32,
    /// Smoothing of [`defect_contrast`] (keep it equal to [`DistanceMaskOptions::sigma`]).
    pub sigma: f32,
    /// Pixels this close to the image edge are not counted: the same ring
    /// [`DistanceMaskOptions::border`] treats as fill, so that the padding artefact the extractor
    /// ignores does not reject the pair either (keep the two equal).
    pub border: usize,
}

impl Default for RejectOptions {
    fn default() -> Self {
        Self {
            area: None,
            max_outside_distance: 6.0,
            min_contrast: None,
            outside_margin: 2,
            fill: PART_FILL,
            sigma: DistanceMaskOptions::default().sigma,
            border: DistanceMaskOptions::default().border,
        }
    }
}

/// Accepts or rejects a generated pair from its part image and the mask extracted from it.
/// Checks, in order: empty mask, part not flat outside the mask, defect contrast, area range. A
/// mask whose size differs from the part image's is an error.
pub fn judge(part: &RgbImage, mask: &GrayImage, opts: &RejectOptions) -> Result<Verdict> {
    if part.dimensions() != mask.dimensions() {
        return Err(Error::invalid(format!(
            "judge: mask is {:?} but the part image is {:?}",
            mask.dimensions(),
            part.dimensions()
        )));
    }
    let m = BinaryMask::from_gray(mask, 128);
    let count = m.count();
    if count == 0 {
        return Ok(Verdict::Rejected(Reason::EmptyMask));
    }
    let mut ignored = m.dilated(opts.outside_margin);
    let (w, h) = (ignored.width, ignored.height);
    for y in 0..h {
        for x in 0..w {
            if near_edge(x, y, w, h, opts.border) {
                ignored.data[y * w + x] = true;
            }
        }
    }
    let dist = distance_map(part, opts.fill);
    if let Some(outside) = dist.mean_where(&ignored, false) {
        if outside > opts.max_outside_distance {
            return Ok(Verdict::Rejected(Reason::PartNotFlat {
                outside_mean_distance: outside,
            }));
        }
    }
    if let Some(min) = opts.min_contrast {
        // defect_contrast, from the distance map already computed.
        let contrast = dist
            .gaussian_blur(opts.sigma)
            .mean_where(&m, true)
            .unwrap_or(0.0);
        if contrast < min {
            return Ok(Verdict::Rejected(Reason::FaintDefect { contrast, min }));
        }
    }
    if let Some(r) = opts.area {
        let area = count as f64 / m.data.len() as f64;
        if !r.contains(area) {
            return Ok(Verdict::Rejected(Reason::AreaOutOfRange {
                area,
                min: r.min,
                max: r.max,
            }));
        }
    }
    Ok(Verdict::Accepted)
}
