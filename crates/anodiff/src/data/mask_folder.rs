//! A folder of masks matched to images by file stem: for an image `<stem>.<ext>` the mask is
//! `DIR/<stem>.png` or `DIR/<stem>_mask.png` (the MVTec ground-truth naming). Used for
//! user-supplied foreground masks and for defect masks outside the MVTec layout. Masks are
//! binarised at half intensity (value ≥ 128 is set) and must have the image's size.

use crate::error::{Error, Result};
use image::GrayImage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An indexed mask folder.
#[derive(Debug, Clone)]
pub struct MaskFolder {
    dir: PathBuf,
    /// What the masks are, for messages (e.g. "foreground mask").
    what: String,
    /// Lower-cased file name → path, for the `.png` files of the folder.
    files: BTreeMap<String, PathBuf>,
}

impl MaskFolder {
    /// Indexes the `.png` files of `dir`; `what` names the masks in error messages.
    pub fn open(dir: &Path, what: &str) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::invalid(format!(
                "{what}s: folder {} not found",
                dir.display()
            )));
        }
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let p = e.map_err(|e| Error::io(dir, e))?.path();
            let is_png = p
                .extension()
                .is_some_and(|x| x.to_string_lossy().eq_ignore_ascii_case("png"));
            if p.is_file() && is_png {
                if let Some(name) = p.file_name() {
                    files.insert(name.to_string_lossy().to_lowercase(), p.clone());
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            what: what.to_string(),
            files,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mask file for an image with file stem `stem` (case-insensitive). Both naming forms
    /// present is an error (which one is meant would be a guess); neither is `Ok(None)`.
    pub fn mask_path(&self, stem: &str) -> Result<Option<&Path>> {
        let find = |name: String| self.files.get(&name.to_lowercase()).map(|p| p.as_path());
        match (
            find(format!("{stem}.png")),
            find(format!("{stem}_mask.png")),
        ) {
            (Some(a), Some(b)) => Err(Error::invalid(format!(
                "{}s: both {} and {} exist for image `{stem}`; keep one",
                self.what,
                a.display(),
                b.display()
            ))),
            (a, b) => Ok(a.or(b)),
        }
    }

    /// The mask of the image file `image` whose size is `dims`, binarised to 0/255. Errors name
    /// the image when its mask is missing and the mask when it is unreadable or mis-sized.
    pub fn load(&self, image: &Path, dims: (u32, u32)) -> Result<GrayImage> {
        let stem = image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = self.mask_path(&stem)?.ok_or_else(|| Error::Image {
            path: image.to_path_buf(),
            msg: format!(
                "no {} for this image (looked for {} and {})",
                self.what,
                self.dir.join(format!("{stem}.png")).display(),
                self.dir.join(format!("{stem}_mask.png")).display()
            ),
        })?;
        let mut m = crate::io::image::load_image(path)?.to_luma8();
        if m.dimensions() != dims {
            return Err(Error::Image {
                path: path.to_path_buf(),
                msg: format!(
                    "{} is {}x{} but image {} is {}x{}",
                    self.what,
                    m.width(),
                    m.height(),
                    image.display(),
                    dims.0,
                    dims.1
                ),
            });
        }
        for v in m.iter_mut() {
            *v = if *v >= 128 { 255 } else { 0 };
        }
        Ok(m)
    }
}
