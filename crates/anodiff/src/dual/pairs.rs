//! DualAnoDiff's training data (METHODS.md A.1, A.5): for one (category, defect type), the real
//! defect images `I` with their masks `M`, and each image's foreground mask `M_f`.
//!
//! Sources: the *training* defects of the few-shot split ([`PairSet::from_split`]; the split's
//! test defects are never read), or, without a dataset layout, an image folder and a mask folder
//! matched by file stem ([`PairSet::from_folders`]). Masks are binarised at half intensity;
//! `M_f` comes from a [`ForegroundEstimator`] once, at load. Images whose mask is empty are
//! skipped (one warning with the count, and listed in the [`LoadReport`]): an unannotated
//! defect would teach the part branch that the defect is invisible.
//!
//! A [`PairSampler`] turns the set into training tensors in [-1, 1]:
//! - whole `I`, `[n, 3, H, W]`;
//! - part `I ⊙ M`, `[n, 3, H, W]`: the product in [-1, 1] space, so outside the defect is 0,
//!   mid-grey;
//! - mask `M`, `[n, 1, H, W]`, in {0, 1};
//! - background `(1 − M_f) ⊙ I`, `[n, 3, H, W]`: here "blacked out" means black pixels, -1 in
//!   [-1, 1] space (not 0, which would be grey): METHODS.md A.5's "foreground blacked out"
//!   taken literally, so the reference never confuses the object's place with a grey surface.
//!
//! [`interleave`] makes the `[whole_0, part_0, whole_1, part_1, …]` rows of the two-branch UNet.
//!
//! Augmentation is [`crate::data::augment`]'s, the same geometric transform for image, mask and
//! foreground mask (masks resampled bilinearly and re-binarised at half, so a resized mask still
//! covers what the resized image shows), with random crops and horizontal / vertical flips. Two
//! geometries ([`Sampling`]):
//! - [`Sampling::Resize`]: the whole image squashed to a square, then a random crop and flips;
//! - [`Sampling::DefectCrop`]: a square window at (close to) native scale that contains the
//!   defect — at 64 px most real defects would otherwise shrink to a few pixels or vanish (see
//!   the data README's size table).
//!
//! Every draw is a pure function of (example, seed), and [`PairSampler::batch`] derives row `j`'s
//! seed from (seed, j), so a training step's `Batch::seed` reproduces its augmentation exactly.

use crate::data::augment::{apply_params, AugmentOptions, AugmentParams, Augmenter};
use crate::data::foreground::ForegroundEstimator;
use crate::data::mask_folder::MaskFolder;
use crate::data::mask_ops::area_fraction;
use crate::data::split::SplitManifest;
use crate::error::{Error, Result};
use crate::io::image::{scaled_dims, IMAGE_EXTENSIONS};
use crate::seed::mix;
use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use image::{GrayImage, ImageBuffer, RgbImage};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// One real defect: the image, its defect mask and its foreground mask (both 0/255, image-sized).
#[derive(Debug, Clone)]
pub struct PairExample {
    /// The image file.
    pub source: PathBuf,
    /// `I`.
    pub image: RgbImage,
    /// `M`, 255 = defect.
    pub mask: GrayImage,
    /// `M_f`, 255 = object.
    pub foreground: GrayImage,
}

/// What loading found.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Examples kept.
    pub loaded: usize,
    /// Images skipped because their mask has no defect pixel.
    pub empty_masks: Vec<PathBuf>,
    /// Kept examples whose foreground mask is the whole image (the background reference is
    /// then all black).
    pub whole_foreground: usize,
    /// The foreground estimator's description.
    pub foreground: String,
}

/// The real defects of one defect type, loaded.
#[derive(Debug, Clone)]
pub struct PairSet {
    name: String,
    examples: Vec<PairExample>,
}

impl PairSet {
    /// The training entries of `defect` in the few-shot split. Errors: an unknown defect type
    /// (listing the known ones), one without training images, a missing or mis-sized mask (naming
    /// the file), or no non-empty mask at all.
    pub fn from_split(
        split: &SplitManifest,
        defect: &str,
        foreground: &dyn ForegroundEstimator,
    ) -> Result<(Self, LoadReport)> {
        let Some(d) = split.defects.get(defect) else {
            let known: Vec<&str> = split.defects.keys().map(|k| k.as_str()).collect();
            return Err(Error::invalid(format!(
                "defect type `{defect}` is not in the split of {} (defect types: {})",
                split.dataset.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        if d.train.is_empty() {
            return Err(Error::invalid(format!(
                "defect type `{defect}` has no training images in the few-shot split of {} \
                 ({} evaluation image(s)); DualAnoDiff needs at least one real defect",
                split.dataset.display(),
                d.test.len()
            )));
        }
        let loaded: Vec<Option<PairExample>> = d
            .train
            .par_iter()
            .map(|e| {
                let path = split.resolve(&e.image);
                let image = split.load_image(e)?;
                let mask_rel = e.mask.as_ref().ok_or_else(|| Error::Image {
                    path: path.clone(),
                    msg: "the split lists no mask for this defect image".into(),
                })?;
                let mask_path = split.resolve(mask_rel);
                let mask = split.load_mask(e)?;
                if mask.dimensions() != image.dimensions() {
                    return Err(Error::Image {
                        path: mask_path,
                        msg: format!(
                            "mask is {}x{} but image {} is {}x{}",
                            mask.width(),
                            mask.height(),
                            path.display(),
                            image.width(),
                            image.height()
                        ),
                    });
                }
                finish(path, image, mask, foreground)
            })
            .collect::<Result<_>>()?;
        let name = format!("{}/{defect}", split.dataset.display());
        Self::assemble(
            name,
            d.train.iter().map(|e| split.resolve(&e.image)),
            loaded,
            foreground,
        )
    }

    /// Every image of `images` (png/jpg/jpeg/bmp, sorted) with its mask from `masks`
    /// (`<stem>.png` or `<stem>_mask.png`). A missing mask is an error naming the image, a
    /// mis-sized one an error naming the mask.
    pub fn from_folders(
        images: &Path,
        masks: &Path,
        foreground: &dyn ForegroundEstimator,
    ) -> Result<(Self, LoadReport)> {
        let masks = MaskFolder::open(masks, "defect mask")?;
        let files = list_images(images)?;
        let loaded: Vec<Option<PairExample>> = files
            .par_iter()
            .map(|p| {
                let image = crate::io::image::load_image(p)?.to_rgb8();
                let mask = masks.load(p, image.dimensions())?;
                finish(p.clone(), image, mask, foreground)
            })
            .collect::<Result<_>>()?;
        let name = images.display().to_string();
        Self::assemble(name, files.into_iter(), loaded, foreground)
    }

    /// A set from examples already in memory (masks are re-binarised at half; sizes checked; an
    /// empty defect mask is an error naming the example).
    pub fn from_examples(name: &str, examples: Vec<PairExample>) -> Result<Self> {
        let mut out = Vec::with_capacity(examples.len());
        for mut e in examples {
            if e.mask.dimensions() != e.image.dimensions()
                || e.foreground.dimensions() != e.image.dimensions()
            {
                return Err(Error::Image {
                    path: e.source.clone(),
                    msg: format!(
                        "image is {:?} but its mask is {:?} and its foreground mask {:?}",
                        e.image.dimensions(),
                        e.mask.dimensions(),
                        e.foreground.dimensions()
                    ),
                });
            }
            binarise(&mut e.mask);
            binarise(&mut e.foreground);
            if e.mask.iter().all(|&v| v == 0) {
                return Err(Error::Image {
                    path: e.source.clone(),
                    msg: "the defect mask is empty".into(),
                });
            }
            out.push(e);
        }
        if out.is_empty() {
            return Err(Error::invalid(format!("{name}: no training defects")));
        }
        Ok(Self {
            name: name.to_string(),
            examples: out,
        })
    }

    fn assemble(
        name: String,
        sources: impl Iterator<Item = PathBuf>,
        loaded: Vec<Option<PairExample>>,
        foreground: &dyn ForegroundEstimator,
    ) -> Result<(Self, LoadReport)> {
        let mut report = LoadReport {
            foreground: foreground.describe(),
            ..Default::default()
        };
        let mut examples = Vec::with_capacity(loaded.len());
        for (src, ex) in sources.zip(loaded) {
            match ex {
                Some(e) => examples.push(e),
                None => report.empty_masks.push(src),
            }
        }
        if let Some(first) = report.empty_masks.first() {
            tracing::warn!(
                "{name}: skipped {} training image(s) with an empty mask (first: {})",
                report.empty_masks.len(),
                first.display()
            );
        }
        if examples.is_empty() {
            return Err(Error::invalid(format!(
                "{name}: every training defect has an empty mask ({} image(s)); nothing to \
                 learn from",
                report.empty_masks.len()
            )));
        }
        report.loaded = examples.len();
        report.whole_foreground = examples
            .iter()
            .filter(|e| e.foreground.iter().all(|&v| v == 255))
            .count();
        Ok((Self { name, examples }, report))
    }

    /// Where the set came from (`dataset/defect` or the image folder).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loaded examples, in source order.
    pub fn examples(&self) -> &[PairExample] {
        &self.examples
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there is none (never true for a loaded set).
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// The defect masks' areas as fractions of their images (for [`super::mask::AreaRange`]).
    pub fn mask_areas(&self) -> Vec<f64> {
        self.examples
            .iter()
            .map(|e| area_fraction(&e.mask))
            .collect()
    }
}

/// The foreground estimate and the empty-mask check for one loaded image.
fn finish(
    source: PathBuf,
    image: RgbImage,
    mut mask: GrayImage,
    foreground: &dyn ForegroundEstimator,
) -> Result<Option<PairExample>> {
    binarise(&mut mask);
    if mask.iter().all(|&v| v == 0) {
        return Ok(None);
    }
    let mut fg = foreground.estimate(&image, Some(&source))?;
    if fg.dimensions() != image.dimensions() {
        return Err(Error::Image {
            path: source,
            msg: format!(
                "the foreground estimate is {:?} but the image is {:?}",
                fg.dimensions(),
                image.dimensions()
            ),
        });
    }
    binarise(&mut fg);
    Ok(Some(PairExample {
        source,
        image,
        mask,
        foreground: fg,
    }))
}

/// Sorted image files of `dir` (hidden files ignored); an empty folder is an error.
fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "defect images: folder {} not found",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        let ext_ok = p.extension().is_some_and(|x| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&x.to_string_lossy()))
        });
        if !hidden && ext_ok && p.is_file() {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no defect images ({})",
            dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        )));
    }
    out.sort();
    Ok(out)
}

/// The geometry of a training sample.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Sampling {
    /// The whole image squashed to `(size + margin)`², then a random `size`² crop (no crop when
    /// `margin` is 0). Defects a few pixels wide at native scale may vanish: prefer `DefectCrop`.
    Resize {
        /// Output side.
        size: u32,
        /// Extra side before the random crop.
        margin: u32,
    },
    /// The image scaled by `scale` (1 = native; raised when needed so the image covers
    /// `size`²), then a `size`² window at a random position among those that contain the
    /// defect's bounding box — or, when the box is larger than the window along an axis, a
    /// randomly chosen defect pixel.
    DefectCrop {
        /// Output side.
        size: u32,
        /// Scale factor applied before cropping.
        scale: f32,
    },
}

impl Sampling {
    /// The output side.
    pub fn size(&self) -> u32 {
        match *self {
            Sampling::Resize { size, .. } | Sampling::DefectCrop { size, .. } => size,
        }
    }
}

/// How samples are drawn.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairOptions {
    /// Geometry.
    pub sampling: Sampling,
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// Probability of a vertical flip.
    pub vflip: f64,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            sampling: Sampling::DefectCrop {
                size: 64,
                scale: 1.0,
            },
            hflip: 0.5,
            vflip: 0.5,
        }
    }
}

/// One augmented sample at `size`×`size`.
#[derive(Debug, Clone)]
pub struct PairDraw {
    /// Index of the example in the sampler.
    pub example: usize,
    /// `I`.
    pub image: RgbImage,
    /// `M`, 0/255.
    pub mask: GrayImage,
    /// `M_f`, 0/255.
    pub foreground: GrayImage,
    /// The crop (in the resized image) and flips that were applied.
    pub params: AugmentParams,
}

/// One example resized to the sampling geometry once, so draws only crop and flip.
#[derive(Debug, Clone)]
struct Prepared {
    source: PathBuf,
    original: (u32, u32),
    image: RgbImage,
    mask: GrayImage,
    foreground: GrayImage,
    /// Defect bounding box `(x0, y0, x1, y1)` (ends exclusive) and the defect pixels.
    bbox: (u32, u32, u32, u32),
    defect: Vec<(u32, u32)>,
}

/// Draws augmented pairs and batches from a [`PairSet`].
#[derive(Debug, Clone)]
pub struct PairSampler {
    opts: PairOptions,
    prepared: Vec<Prepared>,
    dropped: Vec<PathBuf>,
}

impl PairSampler {
    /// Prepares every example for `opts`. An example whose defect vanishes at the sampling
    /// geometry (a pit of a few pixels squashed to 64 px) is left out, with one warning that counts
    /// them (see [`Self::dropped`]); none left is an error.
    pub fn new(set: &PairSet, opts: PairOptions) -> Result<Self> {
        let size = opts.sampling.size();
        if size == 0 {
            return Err(Error::invalid("pair sampling: size must be at least 1"));
        }
        if let Sampling::DefectCrop { scale, .. } = opts.sampling {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(Error::invalid(format!(
                    "pair sampling: scale {scale} must be a positive number"
                )));
            }
        }
        let prepared: Vec<Option<Prepared>> = set
            .examples
            .par_iter()
            .map(|e| prepare(e, &opts.sampling))
            .collect();
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for (p, e) in prepared.into_iter().zip(&set.examples) {
            match p {
                Some(p) => kept.push(p),
                None => dropped.push(e.source.clone()),
            }
        }
        if let Some(first) = dropped.first() {
            tracing::warn!(
                "{}: {} of {} defect(s) vanish at {:?} and are left out (first: {})",
                set.name,
                dropped.len(),
                set.examples.len(),
                opts.sampling,
                first.display()
            );
        }
        if kept.is_empty() {
            return Err(Error::invalid(format!(
                "{}: every defect vanishes at {:?} (masks are resampled and binarised at half); \
                 sample larger or closer to native scale (DefectCrop with scale 1)",
                set.name, opts.sampling
            )));
        }
        Ok(Self {
            opts,
            prepared: kept,
            dropped,
        })
    }

    /// Number of usable examples (draw indices are `0..len()`).
    pub fn len(&self) -> usize {
        self.prepared.len()
    }

    /// Whether there is none (never true for a constructed sampler).
    pub fn is_empty(&self) -> bool {
        self.prepared.is_empty()
    }

    /// The options in use.
    pub fn options(&self) -> &PairOptions {
        &self.opts
    }

    /// The image file of example `i`.
    pub fn source(&self, i: usize) -> Option<&Path> {
        self.prepared.get(i).map(|p| p.source.as_path())
    }

    /// Examples left out because their defect vanishes at the sampling geometry.
    pub fn dropped(&self) -> &[PathBuf] {
        &self.dropped
    }

    fn get(&self, example: usize) -> Result<&Prepared> {
        self.prepared.get(example).ok_or_else(|| {
            Error::invalid(format!(
                "pair example {example} out of range ({} examples)",
                self.prepared.len()
            ))
        })
    }

    /// The crop and flips of draw (example, seed).
    fn params(&self, example: usize, seed: u64) -> Result<AugmentParams> {
        let p = self.get(example)?;
        let size = self.opts.sampling.size();
        let (w, h) = p.image.dimensions();
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(seed ^ mix(example as u64)));
        let aug_seed: u64 = rng.random();
        let crop = match self.opts.sampling {
            Sampling::Resize { margin, .. } => (margin > 0).then_some((size, size)),
            Sampling::DefectCrop { .. } => None,
        };
        let opts = AugmentOptions {
            resize: None,
            crop,
            hflip: self.opts.hflip,
            vflip: self.opts.vflip,
        };
        let mut params = Augmenter::new(opts, aug_seed).draw(w, h)?;
        if let Sampling::DefectCrop { .. } = self.opts.sampling {
            let (px, py) = p.defect[rng.random_range(0..p.defect.len())];
            let (x0, y0, x1, y1) = p.bbox;
            let x = window_start(&mut rng, (x0, x1), px, w, size);
            let y = window_start(&mut rng, (y0, y1), py, h, size);
            params.crop = Some((x, y, size, size));
        }
        Ok(params)
    }

    /// The augmented sample `example` with augmentation `seed` (a pure function of both).
    pub fn draw(&self, example: usize, seed: u64) -> Result<PairDraw> {
        let p = self.get(example)?;
        let params = self.params(example, seed)?;
        let plain = AugmentOptions {
            resize: None,
            crop: None,
            hflip: 0.0,
            vflip: 0.0,
        };
        Ok(PairDraw {
            example,
            image: apply_params(&p.image, &plain, &params, FilterType::Triangle),
            mask: apply_params(&p.mask, &plain, &params, FilterType::Nearest),
            foreground: apply_params(&p.foreground, &plain, &params, FilterType::Nearest),
            params,
        })
    }

    /// Applies draw (example, seed)'s geometry to another image the size of that example's
    /// original (e.g. its defect-free rendering), exactly as the draw's image was transformed.
    pub fn transform_like(&self, example: usize, seed: u64, img: &RgbImage) -> Result<RgbImage> {
        let p = self.get(example)?;
        if img.dimensions() != p.original {
            return Err(Error::invalid(format!(
                "transform_like: image is {:?} but {} is {:?}",
                img.dimensions(),
                p.source.display(),
                p.original
            )));
        }
        let params = self.params(example, seed)?;
        let resized = resize_to(img, p.image.dimensions(), FilterType::Triangle);
        let plain = AugmentOptions {
            resize: None,
            crop: None,
            hflip: 0.0,
            vflip: 0.0,
        };
        Ok(apply_params(
            &resized,
            &plain,
            &params,
            FilterType::Triangle,
        ))
    }

    /// A batch: row `j` is example `examples[j]` drawn with a seed derived from (`seed`, `j`).
    pub fn batch(&self, examples: &[usize], seed: u64, device: &Device) -> Result<PairBatch> {
        let draws = examples
            .iter()
            .enumerate()
            .map(|(j, &e)| self.draw(e, mix(seed ^ mix(0x5EED_0000 + j as u64))))
            .collect::<Result<Vec<_>>>()?;
        PairBatch::from_draws(&draws, device)
    }
}

/// A batch of pairs as tensors in [-1, 1] (layout in the module doc).
#[derive(Debug, Clone)]
pub struct PairBatch {
    /// `I`, `[n, 3, H, W]`.
    pub whole: Tensor,
    /// `I ⊙ M`, `[n, 3, H, W]`, exactly 0 outside the defect.
    pub part: Tensor,
    /// `M`, `[n, 1, H, W]` in {0, 1}.
    pub mask: Tensor,
    /// `(1 − M_f) ⊙ I` with the foreground black (-1), `[n, 3, H, W]`.
    pub background: Tensor,
}

impl PairBatch {
    /// Builds the tensors from same-sized draws.
    pub fn from_draws(draws: &[PairDraw], device: &Device) -> Result<Self> {
        let Some(first) = draws.first() else {
            return Err(Error::invalid("pair batch: no samples"));
        };
        let (w, h) = first.image.dimensions();
        let (w, h) = (w as usize, h as usize);
        let n = draws.len();
        let plane = w * h;
        let mut whole = Vec::with_capacity(n * 3 * plane);
        let mut part = Vec::with_capacity(n * 3 * plane);
        let mut mask = Vec::with_capacity(n * plane);
        let mut background = Vec::with_capacity(n * 3 * plane);
        for d in draws {
            if d.image.dimensions() != (w as u32, h as u32) {
                return Err(Error::invalid(format!(
                    "pair batch: samples of different sizes ({w}x{h} and {:?})",
                    d.image.dimensions()
                )));
            }
            let (img, m, fg) = (d.image.as_raw(), d.mask.as_raw(), d.foreground.as_raw());
            for c in 0..3 {
                for i in 0..plane {
                    let v = img[i * 3 + c] as f32 / 127.5 - 1.0;
                    whole.push(v);
                    part.push(if m[i] >= 128 { v } else { 0.0 });
                    background.push(if fg[i] >= 128 { -1.0 } else { v });
                }
            }
            mask.extend(m.iter().map(|&v| if v >= 128 { 1.0f32 } else { 0.0 }));
        }
        Ok(Self {
            whole: Tensor::from_vec(whole, (n, 3, h, w), device)?,
            part: Tensor::from_vec(part, (n, 3, h, w), device)?,
            mask: Tensor::from_vec(mask, (n, 1, h, w), device)?,
            background: Tensor::from_vec(background, (n, 3, h, w), device)?,
        })
    }

    /// `[whole_0, part_0, whole_1, part_1, …]`, `[2n, 3, H, W]`.
    pub fn interleaved(&self) -> Result<Tensor> {
        interleave(&self.whole, &self.part)
    }
}

/// Rows `[a_0, b_0, a_1, b_1, …]` from two `[n, …]` tensors of the same shape.
pub fn interleave(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() || a.rank() == 0 {
        return Err(Error::invalid(format!(
            "interleave: shapes {:?} and {:?} differ (or are scalars)",
            a.dims(),
            b.dims()
        )));
    }
    let mut dims = a.dims().to_vec();
    dims[0] *= 2;
    Ok(Tensor::stack(&[a, b], 1)?.reshape(dims)?)
}

fn binarise(m: &mut GrayImage) {
    for v in m.iter_mut() {
        *v = if *v >= 128 { 255 } else { 0 };
    }
}

/// `img` resized to `dims` with `filter` (a copy when already that size).
fn resize_to<P>(
    img: &ImageBuffer<P, Vec<u8>>,
    dims: (u32, u32),
    filter: FilterType,
) -> ImageBuffer<P, Vec<u8>>
where
    P: image::Pixel<Subpixel = u8> + 'static,
{
    if img.dimensions() == dims {
        img.clone()
    } else {
        image::imageops::resize(img, dims.0, dims.1, filter)
    }
}

/// A mask resized to `dims` bilinearly, then binarised at half: a defect stays where the resized
/// image shows it, instead of nearest-neighbour's arbitrary pick.
fn resize_mask(m: &GrayImage, dims: (u32, u32)) -> GrayImage {
    let mut r = resize_to(m, dims, FilterType::Triangle);
    binarise(&mut r);
    r
}

/// Resizes an example to the sampling geometry; `None` when its defect vanishes there.
fn prepare(e: &PairExample, sampling: &Sampling) -> Option<Prepared> {
    let (w, h) = e.image.dimensions();
    let dims = match *sampling {
        Sampling::Resize { size, margin } => (size + margin, size + margin),
        // At least `size` along both axes, so a window always fits.
        Sampling::DefectCrop { size, scale } => scaled_dims((w, h), scale as f64, size),
    };
    let mask = resize_mask(&e.mask, dims);
    let defect: Vec<(u32, u32)> = mask
        .enumerate_pixels()
        .filter(|(_, _, v)| v[0] == 255)
        .map(|(x, y, _)| (x, y))
        .collect();
    if defect.is_empty() {
        return None;
    }
    let bbox = defect
        .iter()
        .fold((u32::MAX, u32::MAX, 0, 0), |b, &(x, y)| {
            (b.0.min(x), b.1.min(y), b.2.max(x + 1), b.3.max(y + 1))
        });
    Some(Prepared {
        source: e.source.clone(),
        original: (w, h),
        image: resize_to(&e.image, dims, FilterType::Triangle),
        foreground: resize_mask(&e.foreground, dims),
        mask,
        bbox,
        defect,
    })
}

/// Start of a `size` window along one axis of length `len`: among the windows containing the
/// span `[lo, hi)` when it fits, else among those containing the point `p`.
fn window_start(rng: &mut impl Rng, (lo, hi): (u32, u32), p: u32, len: u32, size: u32) -> u32 {
    let last = len - size;
    let (a, b) = if hi - lo <= size {
        (hi.saturating_sub(size), lo.min(last))
    } else {
        ((p + 1).saturating_sub(size), p.min(last))
    };
    rng.random_range(a..=b.max(a))
}
