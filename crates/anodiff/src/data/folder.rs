//! A folder of training images (DreamBooth-style few-shot sets): every png/jpg/jpeg/bmp file in
//! the folder (not recursive, sorted by name), resized so the shorter side is `size` (bilinear)
//! and center-cropped to `size`×`size` like torchvision's `Resize` + `CenterCrop`, as `[-1, 1]`
//! tensors. An unreadable file is an error naming it.

use crate::error::{Error, Result};
use crate::io::image::{is_image_file, load_rgb, IMAGE_EXTENSIONS};
use crate::io::image_tensor::rgb_to_tensor;
use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use image::RgbImage;
use std::path::{Path, PathBuf};

/// An indexed image folder; images are decoded on demand by [`ImageFolder::image`].
pub struct ImageFolder {
    dir: PathBuf,
    files: Vec<PathBuf>,
    size: usize,
}

impl ImageFolder {
    /// Lists the images of `dir`; an empty folder (or `size` 0) is an error.
    pub fn open(dir: &Path, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(Error::invalid("image size must be at least 1"));
        }
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files = Vec::new();
        for entry in rd {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.is_file() && is_image_file(&path) {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(Error::config(
                dir,
                format!(
                    "no training images ({}) in this folder",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        files.sort();
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            size,
        })
    }

    /// The folder the images were listed from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the folder has no image (never true for an opened folder).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Image paths, sorted.
    pub fn paths(&self) -> &[PathBuf] {
        &self.files
    }

    /// Side in pixels every image is brought to.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Image `i` as a `size`×`size` RGB image.
    pub fn image(&self, i: usize) -> Result<RgbImage> {
        let path = self.files.get(i).ok_or_else(|| {
            Error::invalid(format!(
                "image index {i} out of range ({} images in {})",
                self.files.len(),
                self.dir.display()
            ))
        })?;
        let img = load_rgb(path)?;
        if img.width() == 0 || img.height() == 0 {
            return Err(Error::Image {
                path: path.clone(),
                msg: "image is empty".into(),
            });
        }
        Ok(resize_center_crop(&img, self.size))
    }

    /// Image `i` as `[1, 3, size, size]` in [-1, 1].
    pub fn tensor(&self, i: usize, device: &Device) -> Result<Tensor> {
        rgb_to_tensor(&self.image(i)?, device)
    }

    /// The images at `indices` as one `[B, 3, size, size]` batch.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let ts = indices
            .iter()
            .map(|&i| self.tensor(i, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&ts, 0)?)
    }

    /// Every image, decoded once (few-shot sets are small; also checks all files up front).
    pub fn preload(&self, device: &Device) -> Result<Vec<Tensor>> {
        (0..self.len()).map(|i| self.tensor(i, device)).collect()
    }
}

/// Scales the shorter side to `size` (bilinear; the longer side rounded), then crops the center
/// `size`×`size` square (offsets rounded as torchvision does).
pub fn resize_center_crop(img: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let s = size as f64;
    let (nw, nh) = if w <= h {
        (s, (h * s / w).round().max(s))
    } else {
        ((w * s / h).round().max(s), s)
    };
    let (nw, nh) = (nw as u32, nh as u32);
    let resized = if (nw, nh) == (img.width(), img.height()) {
        img.clone()
    } else {
        image::imageops::resize(img, nw, nh, FilterType::Triangle)
    };
    let left = ((nw - size as u32) as f64 / 2.0).round() as u32;
    let top = ((nh - size as u32) as f64 / 2.0).round() as u32;
    image::imageops::crop_imm(&resized, left, top, size as u32, size as u32).to_image()
}
