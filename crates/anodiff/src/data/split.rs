//! The few-shot split used by DualAnoDiff / AnomalyDiffusion: for each defect type, the defective
//! images sorted by file name, the first ceil(n/3) are the only real defects training may see; the
//! rest, with every `test/good` image, form the evaluation set. Stored as a JSON manifest so every
//! trainer and evaluator uses exactly the same files.

use super::mvtec::{MvtecDataset, Sample};
use crate::error::{Error, Result};
use crate::io::image::{load_mask, load_rgb};
use crate::io::json::{read_json, write_json};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bumped when the manifest format changes incompatibly.
pub const MANIFEST_VERSION: u32 = 1;

/// One-line description of the split rule, stored in every manifest.
pub const PROTOCOL: &str =
    "few-shot: per defect type, images sorted by file name, first ceil(n/3) \
                            train, rest test; all test/good in eval; train/good for training";

/// One image, with paths relative to the dataset root ('/'-separated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitEntry {
    /// File name without extension.
    pub stem: String,
    /// Image path.
    pub image: String,
    /// Mask path (`None` for good images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
}

/// One defect type's images, split into the few-shot training part and the evaluation part.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DefectSplit {
    /// The first ceil(n/3) images by file name: the only real defects training may see.
    pub train: Vec<SplitEntry>,
    /// The remaining images, for evaluation.
    pub test: Vec<SplitEntry>,
}

/// The whole split of one dataset, as stored in `split.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitManifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The rule that produced the split ([`PROTOCOL`]).
    pub protocol: String,
    /// Dataset root (absolute when the dataset could be canonicalised).
    pub dataset: PathBuf,
    /// Defect-free training images (`train/good`).
    pub train_good: Vec<SplitEntry>,
    /// Defect-free evaluation images (`test/good`).
    pub eval_good: Vec<SplitEntry>,
    /// Per defect type, sorted by name.
    pub defects: BTreeMap<String, DefectSplit>,
}

/// How many of `n` defective images go to training: ceil(n/3).
pub fn few_shot_train_count(n: usize) -> usize {
    n.div_ceil(3)
}

impl SplitManifest {
    /// Splits an opened dataset. Deterministic: depends only on file names.
    pub fn few_shot(ds: &MvtecDataset) -> Result<Self> {
        let root = ds.root.canonicalize().unwrap_or_else(|_| ds.root.clone());
        let entries = |samples: &[Sample]| -> Result<Vec<SplitEntry>> {
            let mut v: Vec<&Sample> = samples.iter().collect();
            v.sort_by(|a, b| a.path.file_name().cmp(&b.path.file_name()));
            v.into_iter().map(|s| entry(&ds.root, s)).collect()
        };
        let mut defects = BTreeMap::new();
        for d in &ds.defects {
            let mut all = entries(&d.samples)?;
            let test = all.split_off(few_shot_train_count(all.len()));
            defects.insert(d.name.clone(), DefectSplit { train: all, test });
        }
        Ok(Self {
            version: MANIFEST_VERSION,
            protocol: PROTOCOL.to_string(),
            dataset: root,
            train_good: entries(&ds.train_good)?,
            eval_good: entries(&ds.test_good)?,
            defects,
        })
    }

    /// Writes the manifest as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }

    /// Reads a manifest and checks it: version, every listed file exists, no overlap.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_impl(path, None)
    }

    /// Like [`Self::load`], for a dataset that has moved: entries are resolved against `dataset`.
    pub fn load_at(path: &Path, dataset: &Path) -> Result<Self> {
        Self::load_impl(path, Some(dataset))
    }

    fn load_impl(path: &Path, dataset: Option<&Path>) -> Result<Self> {
        let mut m: Self = read_json(path)?;
        if m.version != MANIFEST_VERSION {
            return Err(Error::config(
                path,
                format!(
                    "split manifest version {} (this build reads {MANIFEST_VERSION})",
                    m.version
                ),
            ));
        }
        if let Some(d) = dataset {
            m.dataset = d.to_path_buf();
        }
        m.validate().map_err(|e| Error::config(path, e))?;
        Ok(m)
    }

    /// Absolute path of a manifest entry path.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        self.dataset.join(rel)
    }

    /// Decodes an entry's image as RGB.
    pub fn load_image(&self, e: &SplitEntry) -> Result<image::RgbImage> {
        load_rgb(&self.resolve(&e.image))
    }

    /// An entry's mask binarised to 0/255 (all zeros for good images, sized like the image).
    pub fn load_mask(&self, e: &SplitEntry) -> Result<image::GrayImage> {
        match &e.mask {
            Some(m) => {
                let mut g = load_mask(&self.resolve(m))?;
                for v in g.iter_mut() {
                    *v = if *v >= super::mvtec::MASK_THRESHOLD {
                        255
                    } else {
                        0
                    };
                }
                Ok(g)
            }
            None => {
                let p = self.resolve(&e.image);
                let (w, h) = image::image_dimensions(&p).map_err(|err| Error::Image {
                    path: p.clone(),
                    msg: err.to_string(),
                })?;
                Ok(image::GrayImage::new(w, h))
            }
        }
    }

    /// Checks that every file exists and no image is both in a training and an evaluation list.
    pub fn validate(&self) -> Result<()> {
        let mut train = BTreeSet::new();
        let mut eval = BTreeSet::new();
        let all_train = self
            .train_good
            .iter()
            .chain(self.defects.values().flat_map(|d| &d.train));
        let all_eval = self
            .eval_good
            .iter()
            .chain(self.defects.values().flat_map(|d| &d.test));
        for (set, list) in [
            (&mut train, all_train.collect::<Vec<_>>()),
            (&mut eval, all_eval.collect()),
        ] {
            for e in list {
                if !set.insert(e.image.as_str()) {
                    return Err(Error::invalid(format!("{} listed twice", e.image)));
                }
                for rel in std::iter::once(&e.image).chain(e.mask.as_ref()) {
                    let p = self.resolve(rel);
                    if !p.is_file() {
                        return Err(Error::invalid(format!(
                            "listed file missing: {}",
                            p.display()
                        )));
                    }
                }
            }
        }
        if let Some(both) = train.intersection(&eval).next() {
            return Err(Error::invalid(format!(
                "{both} is in both the training and the evaluation set"
            )));
        }
        Ok(())
    }

    /// (defect name, train count, test count), sorted by name.
    pub fn counts(&self) -> Vec<(String, usize, usize)> {
        self.defects
            .iter()
            .map(|(k, d)| (k.clone(), d.train.len(), d.test.len()))
            .collect()
    }
}

fn entry(root: &Path, s: &Sample) -> Result<SplitEntry> {
    let rel = |p: &Path| -> Result<String> {
        let r = p.strip_prefix(root).map_err(|_| {
            Error::invalid(format!(
                "{} is not inside the dataset {}",
                p.display(),
                root.display()
            ))
        })?;
        Ok(r.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"))
    };
    Ok(SplitEntry {
        stem: s.stem.clone(),
        image: rel(&s.path)?,
        mask: s.mask.as_deref().map(rel).transpose()?,
    })
}
