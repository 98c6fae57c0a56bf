//! Foreground (object) masks, 255 = object: DualAnoDiff's background image
//! `I_b = (1 − M_f) ⊙ I` and AnomalySD's foreground-restricted inpainting masks both need one.
//! The reference implementation uses a salient-object network whose weights are not
//! redistributable, so anodiff offers two weight-free sources behind [`ForegroundEstimator`]:
//!
//! - [`ClassicalForeground`] (the default, `classical`): colour models of the border and the
//!   centre, checked by edges. The object is assumed to be in the middle of the picture and the
//!   background to reach the image border — but the object may touch the border too (crops of
//!   tiles and spindles fill most of the frame), so the border is not taken as pure background.
//!   1. Work on a copy whose longer side is at most [`ClassicalOptions::work_side`].
//!   2. Two colour histograms ([`ClassicalOptions::bins`] per RGB channel, each bin pooled with
//!      its neighbours so a few samples generalise): the *background* model from a band along the
//!      image border ([`ClassicalOptions::border`] of the shorter side), the *object* model from
//!      the central box ([`ClassicalOptions::centre`] of each side).
//!   3. Per pixel, P(background | colour) = h_bg / (h_bg + h_obj) (colours seen in neither
//!      model count ½, i.e. not background), smoothed with a Gaussian
//!      ([`ClassicalOptions::smooth`] of the shorter side).
//!   4. Background = the pixels above [`ClassicalOptions::background_prob`] that are connected to
//!      the image border (a dark defect inside the object keeps its place in the object), minus
//!      regions smaller than [`ClassicalOptions::min_component`] of the image; foreground = the
//!      rest, small specks removed (enclosed holes are filled by construction).
//!   5. The two models are re-estimated from that split (object = foreground, background =
//!      background) [`ClassicalOptions::iterations`] times, which repairs a centre box that held
//!      background or a border that was mostly object.
//!   6. Each background region must be outlined by a real edge: the mean gradient along its
//!      outline must be well above both the object's median gradient
//!      ([`ClassicalOptions::min_edge_to_object`]) and the region's own
//!      ([`ClassicalOptions::min_edge_to_region`]). Colour alone cannot tell a dark gap beside a
//!      tile from the tile's own shaded end, or a table from a specular highlight near the
//!      border; the outline can — a real background ends at the object's contour and is smoother
//!      than it, a shading or a highlight fades into the object and is as busy as it. Regions
//!      that fail go back to the object.
//!   7. Fallback "the whole image is foreground" ([`Fallback`]) when the background is
//!      (nearly) empty — textures and frame-filling crops — or when the foreground is too small
//!      to be the object. Whole-image foreground is the safe failure for both users: BCM then
//!      sees a black reference, AnomalySD may mask anywhere; the unsafe failure, object marked
//!      background, would hide defects there.
//!
//!   What it does (default options, `anodiff foreground` previews in `runs/foreground/`):
//!   - synthetic `capsule` (pill on a dark table): the pill, IoU ≥ 0.997 with the exact object
//!     mask at 64–256 px (tested); a missing-piece defect is background, as it shows the table;
//!   - synthetic `metal_texture`: the whole image (no distinct background);
//!   - MTD (magnetic tiles): the crops are of the tile surface, which fills the frame; dark
//!     background shows only as thin strips beside a tile's edge or end in some images, a few %
//!     of the image. Of 800 images checked (400 from train/good, 400 spread over test/good and
//!     the five defect types) the estimate is the whole image for 799; in the other
//!     (`train/good/exp6_num_55020`) it cuts out the dark strips along both sides of the tile
//!     (5 %). Elsewhere the strips are found as candidates, but so are shaded tile ends and
//!     highlights, and on the busy tile surface the strips' outlines are not sharp enough to
//!     tell them apart, so they stay foreground.
//!   - BSData (ball-screw spindle): the screw thread fills the frame; the tan surroundings show
//!     only as slivers at its left and right ends. The estimate is the whole image for all 704
//!     images checked: the candidate regions are bright thread flanks near the border (and
//!     those slivers), rejected by the edge test.
//!
//!   So on these two datasets the classical estimate is "everything is object", off by the few
//!   % of background slivers; a user who needs those excluded supplies masks (`dir:PATH`).
//! - [`FolderForeground`] (`dir:PATH`): masks supplied by the user, one per image, matched by the
//!   image's file stem (`<stem>.png` or `<stem>_mask.png`).
//!
//! [`ForegroundSpec`] parses the one-flag form (`classical` | `dir:PATH`) command lines take.

use super::mask_folder::MaskFolder;
use super::mask_ops::{BinaryMask, Connectivity, ScalarMap};
use crate::error::{Error, Result};
use image::imageops::{self, FilterType};
use image::{GrayImage, Rgb, RgbImage};
use std::path::{Path, PathBuf};

/// Estimates which pixels of an image belong to the inspected object.
pub trait ForegroundEstimator: Send + Sync {
    /// A mask the size of `image`, 255 = foreground (object), 0 = background. `source` is the
    /// file the image was read from, for estimators that look masks up by name.
    fn estimate(&self, image: &RgbImage, source: Option<&Path>) -> Result<GrayImage>;
    /// One line saying which estimator this is and its settings (for logs and reports).
    fn describe(&self) -> String;
}

/// Settings of the classical estimate (fractions are of the working image).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassicalOptions {
    /// Longest side of the working copy; larger images are downscaled for the estimate and the
    /// mask is scaled back.
    pub work_side: u32,
    /// Width of the border band that seeds the background model, as a fraction of the shorter
    /// side.
    pub border: f32,
    /// Side of the central box that seeds the object model, as a fraction of each side.
    pub centre: f32,
    /// Histogram bins per colour channel.
    pub bins: usize,
    /// Gaussian σ of the spatial smoothing of P(background), as a fraction of the shorter side.
    pub smooth: f32,
    /// A pixel is background when its smoothed P(background | colour) is above this.
    pub background_prob: f32,
    /// How many times the colour models are re-estimated from the current split.
    pub iterations: usize,
    /// A candidate background region stays background only if the edge strength along its
    /// outline is at least this many times the object's median edge strength (else it is
    /// object: a shaded part, a highlight that fades into the rest)…
    pub min_edge_to_object: f32,
    /// … and at least this many times the region's own median (a background is smoother than
    /// its outline).
    pub min_edge_to_region: f32,
    /// Foreground or background regions smaller than this fraction of the image are dropped.
    pub min_component: f32,
    /// Whole-image fallback when the background covers less than this fraction.
    pub min_background: f32,
    /// Whole-image fallback when the foreground covers less than this fraction.
    pub min_foreground: f32,
}

impl Default for ClassicalOptions {
    fn default() -> Self {
        Self {
            work_side: 256,
            border: 0.04,
            centre: 0.5,
            bins: 16,
            smooth: 0.015,
            background_prob: 0.7,
            iterations: 2,
            // Measured on 1,504 MTD + BSData images, 4,448 candidate regions: all but one are
            // shaded or highlighted object parts (the one, a real gap beside a tile, scores
            // 5.6 / 15.3); on 82 synthetic capsules every candidate is the real table (≥ 8.9 /
            // ≥ 13.8). No object part passes both: those with an object ratio ≥ 5 have a region
            // ratio ≤ 8.2, those with a region ratio ≥ 11 an object ratio ≤ 3.8.
            min_edge_to_object: 5.0,
            min_edge_to_region: 11.0,
            min_component: 0.005,
            min_background: 0.01,
            min_foreground: 0.05,
        }
    }
}

/// Why the classical estimate returned the whole image as foreground.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fallback {
    /// (Almost) nothing looks like the border's colours but not the centre's: a texture or a
    /// frame-filling crop.
    NoBackground {
        /// Background fraction found.
        fraction: f32,
    },
    /// The foreground left is too small to be the object.
    TooSmall {
        /// Foreground fraction found.
        fraction: f32,
    },
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fallback::NoBackground { fraction } => write!(
                f,
                "no distinct background ({:.1} % of the image)",
                100.0 * fraction
            ),
            Fallback::TooSmall { fraction } => {
                write!(f, "foreground too small ({:.1} %)", 100.0 * fraction)
            }
        }
    }
}

/// One classical estimate with the figures that led to it (for previews and logs).
#[derive(Debug, Clone)]
pub struct ClassicalEstimate {
    /// 255 = foreground, the size of the input image.
    pub mask: GrayImage,
    /// Set when the estimate fell back to the whole image.
    pub fallback: Option<Fallback>,
    /// Background fraction of the final split before any fallback.
    pub background: f32,
    /// The candidate background regions and whether each was kept.
    pub regions: Vec<RegionCheck>,
}

/// One candidate background region of the classical estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegionCheck {
    /// Its share of the image.
    pub fraction: f32,
    /// Mean edge strength along its outline over the object's median edge strength (both as
    /// the maximum gradient magnitude in a small window).
    pub edge_to_object: f32,
    /// The same mean over the region's own median (how much sharper the outline is than the
    /// region's inside).
    pub edge_to_region: f32,
    /// Whether it stayed background (both ratios at least their minimum in
    /// [`ClassicalOptions`]).
    pub kept: bool,
}

/// The weight-free default estimator (method, and what it does on the real datasets, in the
/// module doc).
#[derive(Debug, Clone, Default)]
pub struct ClassicalForeground {
    opts: ClassicalOptions,
}

impl ClassicalForeground {
    /// An estimator with the given settings.
    pub fn new(opts: ClassicalOptions) -> Self {
        Self { opts }
    }

    /// The settings in use.
    pub fn options(&self) -> &ClassicalOptions {
        &self.opts
    }

    /// The estimate with its diagnostics.
    pub fn estimate_detailed(&self, image: &RgbImage) -> Result<ClassicalEstimate> {
        let (w0, h0) = image.dimensions();
        if w0 == 0 || h0 == 0 {
            return Err(Error::invalid("foreground: the image is empty"));
        }
        let o = &self.opts;
        if o.bins < 2 || o.bins > 64 {
            return Err(Error::invalid(format!(
                "foreground: {} histogram bins per channel (2..=64 allowed)",
                o.bins
            )));
        }
        let work = downscale(image, o.work_side.max(8));
        let (w, h) = (work.width() as usize, work.height() as usize);
        let short = w.min(h) as f32;
        let min_size = ((o.min_component * (w * h) as f32).ceil() as usize).max(1);
        // The `background_prob` level of a step smoothed with σ lies about σ/2 off the true edge.
        let radius = (0.5 * o.smooth * short).ceil() as usize + 1;
        let (mut bg, prob) = split_by_colour(&work, o, min_size);
        let mut regions = Vec::new();
        if bg.count() > 0 && bg.count() < w * h {
            regions = check_regions(&work, &mut bg, radius, o);
            refine_outline(&mut bg, &prob, radius, min_size);
        }
        let obj = bg.inverted();
        let background = bg.fraction() as f32;
        let fallback = if background < o.min_background {
            Some(Fallback::NoBackground {
                fraction: background,
            })
        } else if 1.0 - background < o.min_foreground {
            Some(Fallback::TooSmall {
                fraction: 1.0 - background,
            })
        } else {
            None
        };
        let mask = match fallback {
            Some(_) => GrayImage::from_pixel(w0, h0, image::Luma([255])),
            None => upscale_mask(&obj.to_gray(), w0, h0),
        };
        Ok(ClassicalEstimate {
            mask,
            fallback,
            background,
            regions,
        })
    }
}

/// Steps 2–5 of the method: the background (border-connected, cleaned) and the last
/// unsmoothed P(background | colour) map.
fn split_by_colour(
    work: &RgbImage,
    o: &ClassicalOptions,
    min_size: usize,
) -> (BinaryMask, ScalarMap) {
    let (w, h) = (work.width() as usize, work.height() as usize);
    let short = w.min(h) as f32;
    let band = ((o.border * short).round() as usize).clamp(1, w.min(h).div_ceil(2));
    let (cw, ch) = (
        ((o.centre * w as f32).round() as usize).clamp(1, w),
        ((o.centre * h as f32).round() as usize).clamp(1, h),
    );
    let (cx0, cy0) = ((w - cw) / 2, (h - ch) / 2);
    let bins = o.bins;
    let bin_of: Vec<usize> = work
        .pixels()
        .map(|p| {
            let b = |v: u8| v as usize * bins / 256;
            (b(p[0]) * bins + b(p[1])) * bins + b(p[2])
        })
        .collect();
    let mut bg = BinaryMask::filled(w, h, false);
    let mut obj = BinaryMask::filled(w, h, false);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            bg.data[i] = x < band || y < band || x + band >= w || y + band >= h;
            obj.data[i] = (cx0..cx0 + cw).contains(&x) && (cy0..cy0 + ch).contains(&y);
        }
    }
    let mut prob = ScalarMap::from_fn(w, h, |_, _| 0.5);
    for _ in 0..=o.iterations {
        if bg.count() == 0 || obj.count() == 0 {
            break;
        }
        let hb = colour_model(&bin_of, &bg, bins);
        let ho = colour_model(&bin_of, &obj, bins);
        prob = ScalarMap::from_fn(w, h, |x, y| {
            let k = bin_of[y * w + x];
            let (b, f) = (hb[k], ho[k]);
            if b + f > 0.0 {
                b / (b + f)
            } else {
                0.5
            }
        });
        let mut next = prob
            .gaussian_blur(o.smooth * short)
            .above(o.background_prob);
        next.keep_border_connected(Connectivity::Eight);
        next.remove_small(min_size);
        let mut fg = next.inverted();
        fg.remove_small(min_size);
        let new_bg = fg.inverted();
        let converged = new_bg == bg;
        bg = new_bg;
        obj = fg;
        if converged {
            break;
        }
    }
    (bg, prob)
}

/// Step 6: clears the background regions without a real edge along their outline. Edge
/// strength is the gradient magnitude maximised over a `radius` window (the smoothed outline
/// may be a few pixels off the true edge); the object's and each region's own level are
/// medians over their pixels farther than `radius` from the outline, which the window would
/// otherwise smear the outline's edge into.
fn check_regions(
    work: &RgbImage,
    bg: &mut BinaryMask,
    radius: usize,
    o: &ClassicalOptions,
) -> Vec<RegionCheck> {
    let (w, h) = (bg.width, bg.height);
    let obj = bg.inverted();
    let grad = gradient_magnitude(work).max_filter(radius);
    let (near_bg, near_obj) = (bg.dilated(radius), obj.dilated(radius));
    let level = |values: &mut Vec<f32>| median(values).max(1.0);
    let mut far_obj: Vec<f32> = (0..w * h)
        .filter(|&i| obj.data[i] && !near_bg.data[i])
        .map(|i| grad.data[i])
        .collect();
    if far_obj.is_empty() {
        far_obj = (0..w * h)
            .filter(|&i| obj.data[i])
            .map(|i| grad.data[i])
            .collect();
    }
    let object_level = level(&mut far_obj);
    let c = bg.components(Connectivity::Eight);
    let mut outline: Vec<Vec<f32>> = vec![Vec::new(); c.sizes.len()];
    let mut inside: Vec<Vec<f32>> = vec![Vec::new(); c.sizes.len()];
    let mut rim: Vec<Vec<f32>> = vec![Vec::new(); c.sizes.len()];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let l = c.labels[i] as usize;
            if l == 0 {
                continue;
            }
            let is_obj = |xx: usize, yy: usize| obj.data[yy * w + xx];
            let on_outline = (x > 0 && is_obj(x - 1, y))
                || (x + 1 < w && is_obj(x + 1, y))
                || (y > 0 && is_obj(x, y - 1))
                || (y + 1 < h && is_obj(x, y + 1));
            let list = if on_outline {
                &mut outline
            } else if near_obj.data[i] {
                &mut rim
            } else {
                &mut inside
            };
            list[l - 1].push(grad.data[i]);
        }
    }
    let mut regions = Vec::with_capacity(c.sizes.len());
    for (((&size, edge), inner), near) in c.sizes.iter().zip(&outline).zip(&mut inside).zip(rim) {
        let strength = if edge.is_empty() {
            0.0
        } else {
            edge.iter().sum::<f32>() / edge.len() as f32
        };
        // A region too thin to have an inside is judged by the pixels it has.
        let own = if inner.is_empty() {
            level(&mut near.clone())
        } else {
            level(inner)
        };
        let edge_to_object = strength / object_level;
        let edge_to_region = strength / own;
        regions.push(RegionCheck {
            fraction: size as f32 / (w * h) as f32,
            edge_to_object,
            edge_to_region,
            kept: edge_to_object >= o.min_edge_to_object && edge_to_region >= o.min_edge_to_region,
        });
    }
    for (v, &l) in bg.data.iter_mut().zip(&c.labels) {
        if l != 0 && !regions[l as usize - 1].kept {
            *v = false;
        }
    }
    regions
}

/// Step 6b: the outline at pixel precision. The smoothing that made the split robust also moved
/// the outline about σ/2 into the background, so the pixels within `radius` of it are decided
/// again by P(background | colour) at ½ after a 1-pixel smoothing; then the same clean-up.
fn refine_outline(bg: &mut BinaryMask, prob: &ScalarMap, radius: usize, min_size: usize) {
    let band_bg = bg.dilated(radius);
    let band_obj = bg.inverted().dilated(radius);
    let fine = prob.gaussian_blur(1.0);
    for i in 0..bg.data.len() {
        if band_bg.data[i] && band_obj.data[i] {
            bg.data[i] = fine.data[i] > 0.5;
        }
    }
    bg.keep_border_connected(Connectivity::Eight);
    bg.remove_small(min_size);
    let mut fg = bg.inverted();
    fg.remove_small(min_size);
    *bg = fg.inverted();
}

/// Per-pixel colour gradient magnitude (central differences of each channel, edges clamped,
/// root of the channel mean of squares), in grey levels per pixel.
fn gradient_magnitude(img: &RgbImage) -> ScalarMap {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let at = |x: usize, y: usize, c: usize| img.get_pixel(x as u32, y as u32)[c] as f32;
    ScalarMap::from_fn(w, h, |x, y| {
        let (xl, xr) = (x.saturating_sub(1), (x + 1).min(w - 1));
        let (yu, yd) = (y.saturating_sub(1), (y + 1).min(h - 1));
        let mut acc = 0.0;
        for c in 0..3 {
            let gx = (at(xr, y, c) - at(xl, y, c)) / (xr - xl).max(1) as f32;
            let gy = (at(x, yd, c) - at(x, yu, c)) / (yd - yu).max(1) as f32;
            acc += gx * gx + gy * gy;
        }
        (acc / 3.0).sqrt()
    })
}

fn median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b)).1
}

/// The normalised colour histogram of the pixels in `region`.
fn colour_hist(bin_of: &[usize], region: &BinaryMask, bins: usize) -> Vec<f32> {
    let mut hist = vec![0f32; bins * bins * bins];
    let mut n = 0f32;
    for (&k, &inside) in bin_of.iter().zip(&region.data) {
        if inside {
            hist[k] += 1.0;
            n += 1.0;
        }
    }
    if n > 0.0 {
        hist.iter_mut().for_each(|v| *v /= n);
    }
    hist
}

/// A normalised colour histogram of the pixels in `region`, each bin pooled with its 26
/// neighbours (a cheap kernel density estimate: few-sample models still cover nearby colours).
fn colour_model(bin_of: &[usize], region: &BinaryMask, bins: usize) -> Vec<f32> {
    let hist = colour_hist(bin_of, region, bins);
    let at = |r: usize, g: usize, b: usize| (r * bins + g) * bins + b;
    let mut pooled = vec![0f32; hist.len()];
    for r in 0..bins {
        for g in 0..bins {
            for b in 0..bins {
                let mut acc = 0.0;
                for rr in r.saturating_sub(1)..(r + 2).min(bins) {
                    for gg in g.saturating_sub(1)..(g + 2).min(bins) {
                        for bb in b.saturating_sub(1)..(b + 2).min(bins) {
                            acc += hist[at(rr, gg, bb)];
                        }
                    }
                }
                pooled[at(r, g, b)] = acc;
            }
        }
    }
    pooled
}

impl ForegroundEstimator for ClassicalForeground {
    fn estimate(&self, image: &RgbImage, source: Option<&Path>) -> Result<GrayImage> {
        self.estimate_detailed(image)
            .map(|e| e.mask)
            .map_err(|e| match source {
                Some(p) => Error::Image {
                    path: p.to_path_buf(),
                    msg: format!("foreground estimate failed: {e}"),
                },
                None => e,
            })
    }

    fn describe(&self) -> String {
        let o = &self.opts;
        format!(
            "classical (border-band vs centre colour models: band {} %, centre {} %, \
             {} bins/channel, P(background) > {} after σ {} % smoothing, {} refinement(s); \
             background outlines ≥ {}× the object's and {}× their own edge strength; whole \
             image when background < {} % or foreground < {} %)",
            100.0 * o.border,
            100.0 * o.centre,
            o.bins,
            o.background_prob,
            100.0 * o.smooth,
            o.iterations,
            o.min_edge_to_object,
            o.min_edge_to_region,
            100.0 * o.min_background,
            100.0 * o.min_foreground
        )
    }
}

/// Masks supplied by the user: `DIR/<stem>.png` or `DIR/<stem>_mask.png` for an image
/// `<stem>.<ext>`, binarised at half intensity, the size of the image (see [`MaskFolder`]).
#[derive(Debug, Clone)]
pub struct FolderForeground {
    masks: MaskFolder,
}

impl FolderForeground {
    /// Indexes the `.png` files of `dir` (an error names a missing or unreadable folder).
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            masks: MaskFolder::open(dir, "foreground mask")?,
        })
    }

    /// The folder the masks come from.
    pub fn dir(&self) -> &Path {
        self.masks.dir()
    }
}

impl ForegroundEstimator for FolderForeground {
    fn estimate(&self, image: &RgbImage, source: Option<&Path>) -> Result<GrayImage> {
        let src = source.ok_or_else(|| {
            Error::invalid(format!(
                "foreground masks from {}: masks are matched by the image's file name, but this \
                 image has none",
                self.dir().display()
            ))
        })?;
        self.masks.load(src, image.dimensions())
    }

    fn describe(&self) -> String {
        format!("masks from {}", self.dir().display())
    }
}

/// The accepted `--foreground` forms.
pub const FOREGROUND_SPECS: [&str; 2] = ["classical", "dir:PATH"];

/// Which foreground estimator to use, as one command-line value: `classical` | `dir:PATH`.
#[derive(Debug, Clone, PartialEq)]
pub enum ForegroundSpec {
    /// [`ClassicalForeground`] with default options.
    Classical,
    /// [`FolderForeground`] on this folder.
    Dir(PathBuf),
}

impl ForegroundSpec {
    /// Parses `classical` or `dir:PATH`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "classical" => Ok(Self::Classical),
            _ => match s.strip_prefix("dir:") {
                Some(p) if !p.is_empty() => Ok(Self::Dir(PathBuf::from(p))),
                _ => Err(Error::invalid(format!(
                    "unknown foreground method `{s}`; valid: {}",
                    FOREGROUND_SPECS.join(", ")
                ))),
            },
        }
    }

    /// Builds the estimator (opens the folder for `dir:`).
    pub fn build(&self) -> Result<Box<dyn ForegroundEstimator>> {
        Ok(match self {
            Self::Classical => Box::new(ClassicalForeground::default()),
            Self::Dir(d) => Box::new(FolderForeground::open(d)?),
        })
    }
}

impl std::str::FromStr for ForegroundSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for ForegroundSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Classical => write!(f, "classical"),
            Self::Dir(p) => write!(f, "dir:{}", p.display()),
        }
    }
}

/// The image with its foreground blacked out, `(1 − M_f) ⊙ I` with black where `M_f` ≥ 128.
pub fn black_out_foreground(image: &RgbImage, foreground: &GrayImage) -> Result<RgbImage> {
    if image.dimensions() != foreground.dimensions() {
        return Err(Error::invalid(format!(
            "foreground mask is {:?} but the image is {:?}",
            foreground.dimensions(),
            image.dimensions()
        )));
    }
    let mut out = image.clone();
    for (p, m) in out.pixels_mut().zip(foreground.pixels()) {
        if m[0] >= 128 {
            *p = Rgb([0, 0, 0]);
        }
    }
    Ok(out)
}

/// A copy whose longer side is at most `side` (bilinear).
fn downscale(image: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let long = w.max(h);
    if long <= side {
        return image.clone();
    }
    let s = side as f64 / long as f64;
    let nw = ((w as f64 * s).round() as u32).max(1);
    let nh = ((h as f64 * s).round() as u32).max(1);
    imageops::resize(image, nw, nh, FilterType::Triangle)
}

/// A 0/255 mask resized to (w, h): bilinear, then binarised at half, so edges stay smooth.
fn upscale_mask(mask: &GrayImage, w: u32, h: u32) -> GrayImage {
    if mask.dimensions() == (w, h) {
        return mask.clone();
    }
    let mut m = imageops::resize(mask, w, h, FilterType::Triangle);
    for v in m.iter_mut() {
        *v = if *v >= 128 { 255 } else { 0 };
    }
    m
}
