//! `dir:PATH`: pairs generated elsewhere (DualAnoDiff's output), stored as
//! `PATH/image/<stem>.{png,jpg,jpeg,bmp}` and `PATH/mask/<stem>.png`. Every pair is checked when the
//! folder is opened (names and sizes, from the file headers); images are decoded on first use and
//! cached at the training size.

use super::{AnomalyPair, AnomalySource};
use crate::data::augment::{apply_params, AugmentOptions, AugmentParams};
use crate::error::{Error, Result};
use crate::io::image::{load_mask, load_rgb, IMAGE_EXTENSIONS};
use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `dir:PATH` source: pairs decoded once, then flipped at random per draw.
pub struct DirSource {
    name: String,
    size: u32,
    /// (image path, mask path), sorted by stem.
    files: Vec<(PathBuf, PathBuf)>,
    cache: Vec<Option<(RgbImage, GrayImage)>>,
}

/// stem → path for the files of `dir` with one of `exts` (case-insensitive); other files are
/// ignored. Two files with the same stem are an error.
fn list(dir: &Path, exts: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "dir source: folder {} is missing",
            dir.display()
        )));
    }
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        let ext = p
            .extension()
            .map(|x| x.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if !p.is_file() || !exts.contains(&ext.as_str()) {
            continue;
        }
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(prev) = out.insert(stem, p.clone()) {
            return Err(Error::invalid(format!(
                "dir source: {} and {} have the same stem",
                prev.display(),
                p.display()
            )));
        }
    }
    Ok(out)
}

fn dims(p: &Path) -> Result<(u32, u32)> {
    image::image_dimensions(p).map_err(|e| Error::Image {
        path: p.to_path_buf(),
        msg: e.to_string(),
    })
}

impl DirSource {
    /// Opens and checks the folder; `name` is the spec string (`dir:PATH`).
    pub fn open(root: &Path, size: u32, name: &str) -> Result<Self> {
        let images = list(&root.join("image"), &IMAGE_EXTENSIONS)?;
        let masks = list(&root.join("mask"), &["png"])?;
        if let Some((stem, p)) = images.iter().find(|(s, _)| !masks.contains_key(*s)) {
            return Err(Error::invalid(format!(
                "dir source: image {} has no mask {}",
                p.display(),
                root.join("mask").join(format!("{stem}.png")).display()
            )));
        }
        if let Some((_, p)) = masks.iter().find(|(s, _)| !images.contains_key(*s)) {
            return Err(Error::invalid(format!(
                "dir source: mask {} has no image in {}",
                p.display(),
                root.join("image").display()
            )));
        }
        if images.is_empty() {
            return Err(Error::invalid(format!(
                "dir source: {} has no image/mask pairs (expected image/<stem>.png|jpg and \
                 mask/<stem>.png)",
                root.display()
            )));
        }
        let mut files = Vec::with_capacity(images.len());
        for (stem, ip) in images {
            let mp = masks[&stem].clone();
            let (a, b) = (dims(&ip)?, dims(&mp)?);
            if a != b {
                return Err(Error::invalid(format!(
                    "dir source: image {} is {}x{} but its mask {} is {}x{}",
                    ip.display(),
                    a.0,
                    a.1,
                    mp.display(),
                    b.0,
                    b.1
                )));
            }
            files.push((ip, mp));
        }
        Ok(Self {
            name: name.to_string(),
            size,
            cache: vec![None; files.len()],
            files,
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the folder has no pair (never true for an opened source).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Decodes pair `i` at the training size: bilinear image, nearest mask binarised at 128.
    fn load(&self, i: usize) -> Result<(RgbImage, GrayImage)> {
        let (ip, mp) = &self.files[i];
        let s = self.size;
        let img = load_rgb(ip)?;
        let mut mask = load_mask(mp)?;
        if img.dimensions() != mask.dimensions() {
            return Err(Error::invalid(format!(
                "dir source: image {} and mask {} differ in size",
                ip.display(),
                mp.display()
            )));
        }
        let img = imageops::resize(&img, s, s, FilterType::Triangle);
        if mask.dimensions() != (s, s) {
            mask = imageops::resize(&mask, s, s, FilterType::Nearest);
        }
        for v in mask.iter_mut() {
            *v = if *v >= 128 { 255 } else { 0 };
        }
        Ok((img, mask))
    }
}

impl AnomalySource for DirSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn sample(&mut self, rng: &mut StdRng) -> Result<AnomalyPair> {
        let i = rng.random_range(0..self.files.len());
        if self.cache[i].is_none() {
            self.cache[i] = Some(self.load(i)?);
        }
        let (img, mask) = self.cache[i]
            .as_ref()
            .ok_or_else(|| Error::invalid("dir source: cache slot not filled"))?;
        let p = AugmentParams {
            crop: None,
            hflip: rng.random_bool(0.5),
            vflip: rng.random_bool(0.5),
        };
        let opts = AugmentOptions {
            resize: None,
            crop: None,
            hflip: 0.5,
            vflip: 0.5,
        };
        Ok(AnomalyPair {
            image: apply_params(img, &opts, &p, FilterType::Triangle),
            mask: apply_params(mask, &opts, &p, FilterType::Nearest),
        })
    }
}
