//! Reader for datasets in the MVTec AD layout:
//!
//! ```text
//! <root>/train/good/*.{png,jpg,jpeg,bmp}
//! <root>/test/good/*
//! <root>/test/<defect>/*
//! <root>/ground_truth/<defect>/<stem>_mask.png
//! ```
//!
//! Opening a dataset only reads image headers (sizes) and decodes the masks (small, and needed to
//! find empty / non-binary ones); images are decoded on demand. Every problem found is recorded in a
//! [`ValidationReport`] that names the file, and logged with `tracing::warn!`.

use crate::error::{Error, Result};
use crate::io::image::{is_image_file, load_image, load_mask, load_rgb};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Masks are binarised at half intensity: value >= 128 is defect.
pub const MASK_THRESHOLD: u8 = 128;

/// What to do with a file that has an error (unreadable image, missing or mismatched mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadFile {
    /// `open` fails, listing every error.
    #[default]
    Error,
    /// The sample is left out of the dataset; the error stays in the report.
    Skip,
}

/// How much of each file to read while opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Check {
    /// Image headers only (fast); masks are always fully decoded.
    #[default]
    Headers,
    /// Also decode every image, which catches truncated files (slow on big datasets).
    Full,
}

/// What kind of problem an [`Issue`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueKind {
    /// A defect image has no `<stem>_mask.png` (error).
    MissingMask,
    /// A mask, or mask folder, without an image (warning; ignored).
    ExtraMask,
    /// Mask and image sizes differ (error).
    SizeMismatch,
    /// Masks with values other than 0 and 255 (one warning per dataset).
    NonBinaryMask,
    /// A mask with no defect pixel (warning).
    EmptyMask,
    /// A folder with no images, or `test/` with no defect types (warning).
    EmptyFolder,
    /// A required folder is missing (error).
    MissingFolder,
    /// An image that cannot be read or decoded (error).
    UnreadableImage,
    /// A mask that cannot be decoded (error).
    UnreadableMask,
    /// Two images with the same stem in one folder (error: masks are matched by stem).
    DuplicateStem,
    /// A file that is neither an image nor a mask (warning; ignored).
    UnexpectedFile,
}

/// One problem, naming the file or folder it concerns.
#[derive(Debug, Clone)]
pub struct Issue {
    /// What went wrong.
    pub kind: IssueKind,
    /// The file or folder concerned.
    pub path: PathBuf,
    /// Human-readable explanation.
    pub msg: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.msg)
    }
}

/// Everything `open` found. Errors make a sample unusable; warnings do not.
#[derive(Debug, Clone, Default)]
pub struct ValidationReport {
    /// Problems that make a sample unusable.
    pub errors: Vec<Issue>,
    /// Problems that are reported but change nothing.
    pub warnings: Vec<Issue>,
    /// Masks with values other than 0 and 255 (binarised at [`MASK_THRESHOLD`] when loaded).
    pub non_binary_masks: Vec<PathBuf>,
    /// Masks with no defect pixel after binarisation.
    pub empty_masks: Vec<PathBuf>,
    /// Images left out under [`OnBadFile::Skip`].
    pub skipped: Vec<PathBuf>,
}

impl ValidationReport {
    /// No errors and no warnings.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.warnings.is_empty()
    }
    /// Number of errors and warnings of `kind`.
    pub fn count(&self, kind: IssueKind) -> usize {
        self.errors
            .iter()
            .chain(&self.warnings)
            .filter(|i| i.kind == kind)
            .count()
    }
    fn error(&mut self, kind: IssueKind, path: &Path, msg: impl Into<String>) {
        self.errors.push(Issue {
            kind,
            path: path.to_path_buf(),
            msg: msg.into(),
        });
    }
    fn warn(&mut self, kind: IssueKind, path: &Path, msg: impl Into<String>) {
        self.warnings.push(Issue {
            kind,
            path: path.to_path_buf(),
            msg: msg.into(),
        });
    }
}

/// The category's name: the dataset folder's name (resolving `.` and `..`), if it has one.
pub fn category_name(root: &Path) -> Option<String> {
    root.canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(root)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// One image of the dataset (not decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// File name without extension; masks are `<stem>_mask.png`.
    pub stem: String,
    /// Image file.
    pub path: PathBuf,
    /// Width in pixels, from the header.
    pub width: u32,
    /// Height in pixels, from the header.
    pub height: u32,
    /// Ground-truth mask; `None` for good images.
    pub mask: Option<PathBuf>,
}

/// The defective test images of one defect type, sorted by file name.
#[derive(Debug, Clone)]
pub struct DefectSet {
    /// Defect type: the folder name under `test/`.
    pub name: String,
    /// Its images, each with its mask.
    pub samples: Vec<Sample>,
}

/// An indexed MVTec-layout dataset (one category).
#[derive(Debug, Clone)]
pub struct MvtecDataset {
    /// Dataset (category) folder.
    pub root: PathBuf,
    /// `train/good`, sorted by file name.
    pub train_good: Vec<Sample>,
    /// `test/good`, sorted by file name.
    pub test_good: Vec<Sample>,
    /// Sorted by defect name.
    pub defects: Vec<DefectSet>,
}

impl MvtecDataset {
    /// Indexes and validates `root`. Fails on the first file-level error under
    /// [`OnBadFile::Error`] (the message lists all errors); warnings never fail.
    pub fn open(root: &Path, policy: OnBadFile) -> Result<(Self, ValidationReport)> {
        Self::open_with(root, policy, Check::Headers)
    }

    /// Like [`MvtecDataset::open`], choosing how much of each image to decode.
    pub fn open_with(
        root: &Path,
        policy: OnBadFile,
        check: Check,
    ) -> Result<(Self, ValidationReport)> {
        let (ds, mut report) = scan(root, check)?;
        for i in &report.warnings {
            tracing::warn!("{i}");
        }
        if report.errors.is_empty() {
            return Ok((ds, report));
        }
        match policy {
            OnBadFile::Error => {
                let shown: Vec<String> = report
                    .errors
                    .iter()
                    .take(10)
                    .map(|i| i.to_string())
                    .collect();
                let more = report.errors.len().saturating_sub(10);
                let tail = if more > 0 {
                    format!("\n  ... and {more} more")
                } else {
                    String::new()
                };
                Err(Error::invalid(format!(
                    "dataset {}: {} error(s):\n  {}{tail}",
                    root.display(),
                    report.errors.len(),
                    shown.join("\n  ")
                )))
            }
            OnBadFile::Skip => {
                for i in &report.errors {
                    tracing::warn!("skipping: {i}");
                }
                report.skipped = report
                    .errors
                    .iter()
                    .filter(|i| is_image_error(i.kind))
                    .map(|i| i.path.clone())
                    .collect();
                Ok((ds, report))
            }
        }
    }

    /// Names of the defect types, sorted.
    pub fn defect_names(&self) -> Vec<&str> {
        self.defects.iter().map(|d| d.name.as_str()).collect()
    }

    /// The defect set called `name`, if any.
    pub fn defect(&self, name: &str) -> Option<&DefectSet> {
        self.defects.iter().find(|d| d.name == name)
    }

    /// Decodes a sample's image as RGB (greyscale is replicated to 3 channels).
    pub fn load_image(sample: &Sample) -> Result<image::RgbImage> {
        load_rgb(&sample.path)
    }

    /// The sample's mask, binarised to 0/255; all zeros for good images.
    pub fn load_mask(sample: &Sample) -> Result<image::GrayImage> {
        match &sample.mask {
            None => Ok(image::GrayImage::new(sample.width, sample.height)),
            Some(p) => {
                let mut m = load_mask(p)?;
                for v in m.iter_mut() {
                    *v = if *v >= MASK_THRESHOLD { 255 } else { 0 };
                }
                Ok(m)
            }
        }
    }
}

/// Errors that concern an image (and so make it skipped), as opposed to a stray mask.
fn is_image_error(kind: IssueKind) -> bool {
    matches!(
        kind,
        IssueKind::MissingMask
            | IssueKind::SizeMismatch
            | IssueKind::UnreadableImage
            | IssueKind::UnreadableMask
            | IssueKind::DuplicateStem
    )
}

/// Sorted regular files of `dir` (hidden files ignored).
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        if !hidden && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Sorted subfolder names of `dir`.
fn list_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.path().is_dir() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// An image's (width, height), or why it could not be read.
type DimsOrError = std::result::Result<(u32, u32), String>;

/// Indexes the images of one folder: headers (or full decode), duplicates, stray files.
fn scan_images(dir: &Path, check: Check, report: &mut ValidationReport) -> Result<Vec<Sample>> {
    let files = list_files(dir)?;
    let (images, others): (Vec<_>, Vec<_>) = files.into_iter().partition(|p| is_image_file(p));
    for p in others {
        report.warn(
            IssueKind::UnexpectedFile,
            &p,
            "not an image (png/jpg/jpeg/bmp expected); ignored",
        );
    }
    if images.is_empty() {
        report.warn(IssueKind::EmptyFolder, dir, "folder has no images");
    }
    let read: Vec<(PathBuf, DimsOrError)> = images
        .into_par_iter()
        .map(|p| {
            let r = match check {
                Check::Headers => image::image_dimensions(&p).map_err(|e| e.to_string()),
                Check::Full => load_image(&p)
                    .map(|i| (i.width(), i.height()))
                    .map_err(|e| e.to_string()),
            };
            (p, r)
        })
        .collect();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = Vec::new();
    for (p, r) in read {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(first) = seen.get(&stem) {
            report.error(
                IssueKind::DuplicateStem,
                &p,
                format!(
                    "same name as {} (masks are matched by name)",
                    first.display()
                ),
            );
            continue;
        }
        match r {
            Ok((width, height)) => {
                seen.insert(stem.clone(), p.clone());
                out.push(Sample {
                    stem,
                    path: p,
                    width,
                    height,
                    mask: None,
                });
            }
            Err(e) => report.error(
                IssueKind::UnreadableImage,
                &p,
                format!("unreadable image: {e}"),
            ),
        }
    }
    Ok(out)
}

/// What decoding a mask told us.
enum MaskInfo {
    Ok {
        width: u32,
        height: u32,
        binary: bool,
        empty: bool,
    },
    Unreadable(String),
}

fn inspect_mask(p: &Path) -> MaskInfo {
    match load_image(p) {
        Err(e) => MaskInfo::Unreadable(e.to_string()),
        Ok(img) => {
            let m = img.to_luma8();
            let binary = m.iter().all(|&v| v == 0 || v == 255);
            let empty = m.iter().all(|&v| v < MASK_THRESHOLD);
            MaskInfo::Ok {
                width: m.width(),
                height: m.height(),
                binary,
                empty,
            }
        }
    }
}

/// Builds the index and the full report; bad samples are left out.
fn scan(root: &Path, check: Check) -> Result<(MvtecDataset, ValidationReport)> {
    if !root.is_dir() {
        return Err(Error::invalid(format!(
            "{}: dataset folder not found",
            root.display()
        )));
    }
    let mut report = ValidationReport::default();
    let folder = |rel: &str, report: &mut ValidationReport| -> Result<Vec<Sample>> {
        let dir = root.join(rel);
        if dir.is_dir() {
            scan_images(&dir, check, report)
        } else {
            report.error(IssueKind::MissingFolder, &dir, "folder missing");
            Ok(Vec::new())
        }
    };
    let train_good = folder("train/good", &mut report)?;
    let test_good = folder("test/good", &mut report)?;

    let test_dir = root.join("test");
    let gt_dir = root.join("ground_truth");
    let defect_names: Vec<String> = if test_dir.is_dir() {
        list_dirs(&test_dir)?
            .into_iter()
            .filter(|n| n != "good")
            .collect()
    } else {
        Vec::new()
    };

    let mut defects = Vec::new();
    for name in &defect_names {
        let samples = scan_images(&test_dir.join(name), check, &mut report)?;
        let mask_dir = gt_dir.join(name);
        let mut masks: BTreeMap<String, PathBuf> = BTreeMap::new();
        if mask_dir.is_dir() {
            for p in list_files(&mask_dir)? {
                let fname = p
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match fname.strip_suffix("_mask.png") {
                    Some(stem) => {
                        masks.insert(stem.to_string(), p);
                    }
                    None => report.warn(
                        IssueKind::UnexpectedFile,
                        &p,
                        "not a mask (<stem>_mask.png expected); ignored",
                    ),
                }
            }
        } else if !samples.is_empty() {
            report.error(
                IssueKind::MissingFolder,
                &mask_dir,
                format!("mask folder missing for defect type `{name}`"),
            );
        }

        // Pair images with masks, then decode the masks in parallel.
        let mut paired = Vec::new();
        for mut s in samples {
            match masks.remove(&s.stem) {
                Some(m) => {
                    s.mask = Some(m);
                    paired.push(s);
                }
                None => report.error(
                    IssueKind::MissingMask,
                    &s.path,
                    format!(
                        "no mask {}",
                        mask_dir.join(format!("{}_mask.png", s.stem)).display()
                    ),
                ),
            }
        }
        for (stem, p) in masks {
            report.warn(
                IssueKind::ExtraMask,
                &p,
                format!(
                    "mask without image (no {}/{stem}.*); ignored",
                    test_dir.join(name).display()
                ),
            );
        }
        let infos: Vec<MaskInfo> = paired
            .par_iter()
            .map(|s| inspect_mask(s.mask.as_deref().expect("paired")))
            .collect();
        let mut kept = Vec::new();
        for (s, info) in paired.into_iter().zip(infos) {
            let mp = s.mask.clone().expect("paired");
            match info {
                MaskInfo::Unreadable(e) => {
                    report.error(
                        IssueKind::UnreadableMask,
                        &mp,
                        format!("unreadable mask: {e}"),
                    );
                }
                MaskInfo::Ok {
                    width,
                    height,
                    binary,
                    empty,
                } => {
                    if (width, height) != (s.width, s.height) {
                        report.error(
                            IssueKind::SizeMismatch,
                            &mp,
                            format!(
                                "mask is {width}x{height} but image {} is {}x{}",
                                s.path.display(),
                                s.width,
                                s.height
                            ),
                        );
                        continue;
                    }
                    if !binary {
                        report.non_binary_masks.push(mp.clone());
                    }
                    if empty {
                        report.empty_masks.push(mp.clone());
                        report.warn(IssueKind::EmptyMask, &mp, "mask has no defect pixel");
                    }
                    kept.push(s);
                }
            }
        }
        defects.push(DefectSet {
            name: name.clone(),
            samples: kept,
        });
    }

    // Mask folders for defect types that have no test images.
    if gt_dir.is_dir() {
        for name in list_dirs(&gt_dir)? {
            if !defect_names.contains(&name) {
                report.warn(
                    IssueKind::ExtraMask,
                    &gt_dir.join(&name),
                    format!("mask folder without test/{name} images; ignored"),
                );
            }
        }
    }
    // One warning per dataset, not one per mask.
    if let Some(first) = report.non_binary_masks.first().cloned() {
        let n = report.non_binary_masks.len();
        report.warn(
            IssueKind::NonBinaryMask,
            &gt_dir,
            format!(
                "{n} mask(s) have values other than 0/255 (binarised at {MASK_THRESHOLD}), first: {}",
                first.display()
            ),
        );
    }
    if defects.is_empty() {
        report.warn(
            IssueKind::EmptyFolder,
            &test_dir,
            "no defect types (only test/good)",
        );
    }
    Ok((
        MvtecDataset {
            root: root.to_path_buf(),
            train_good,
            test_good,
            defects,
        },
        report,
    ))
}
