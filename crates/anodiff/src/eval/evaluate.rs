//! Scores a prediction folder against the evaluation half of a few-shot split (METHODS.md A.7):
//! image AUROC / AP / F1-max from `scores.csv`, pixel AUROC / AP / F1-max and AU-PRO from the maps,
//! per defect type (that type's test images + every defect-free evaluation image) and overall.
//!
//! Images are streamed one at a time into the pixel accumulators; the defect-free images are
//! stored once and merged with each defect type at metric time.

use super::aupro::FPR_LIMIT;
use super::metrics::binary_metrics;
use super::pixels::{pixel_metrics, PixelMetrics, PixelScores, SortedPixelScores};
use super::predictions::Predictions;
use crate::data::split::{SplitEntry, SplitManifest};
use crate::error::{Error, Result};
use crate::io::json::write_json;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Defect name under which defect-free evaluation images are predicted.
pub const GOOD: &str = "good";

/// How [`evaluate`] computes pixel metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// `None`: exact pixel metrics (≈4 bytes per pixel). `Some(n)`: approximate, fixed-memory
    /// histograms of `n` bins between the smallest and largest map value (maps are read twice).
    pub bins: Option<usize>,
    /// AU-PRO integrates up to this false-positive rate (0.3 in the papers).
    pub pro_fpr_limit: f64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            bins: None,
            pro_fpr_limit: FPR_LIMIT,
        }
    }
}

/// Metrics in [0, 1]; NaN (JSON `null`, table "n/a") when undefined, e.g. a single class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricSet {
    /// Image-level AUROC from `scores.csv`.
    #[serde(with = "nan_as_null")]
    pub image_auroc: f64,
    /// Image-level average precision.
    #[serde(with = "nan_as_null")]
    pub image_ap: f64,
    /// Image-level best F1 over thresholds.
    #[serde(with = "nan_as_null")]
    pub image_f1_max: f64,
    /// Pixel-level AUROC over the maps.
    #[serde(with = "nan_as_null")]
    pub pixel_auroc: f64,
    /// Pixel-level average precision.
    #[serde(with = "nan_as_null")]
    pub pixel_ap: f64,
    /// Pixel-level best F1 over thresholds.
    #[serde(with = "nan_as_null")]
    pub pixel_f1_max: f64,
    /// Area under the per-region-overlap curve up to `pro_fpr_limit`, normalised.
    #[serde(with = "nan_as_null")]
    pub pixel_aupro: f64,
}

/// Sizes of the evaluation set, for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Defect-free evaluation images.
    pub good_images: usize,
    /// Evaluation images per defect type.
    pub defect_images: BTreeMap<String, usize>,
    /// Ground-truth pixels over all evaluation images.
    pub pixels: u64,
    /// Defect pixels among them.
    pub positive_pixels: u64,
    /// Connected defect regions (what AU-PRO averages over).
    pub regions: u64,
}

/// What [`evaluate`] returns and `metrics.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Per defect type: that type's images with every defect-free evaluation image.
    pub per_defect: BTreeMap<String, MetricSet>,
    /// All evaluation images together.
    pub overall: MetricSet,
    /// Sizes of the evaluation set.
    pub counts: Counts,
    /// The options used.
    pub options: EvalOptions,
}

mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

impl EvalReport {
    /// Markdown table, metrics as percentages with one decimal.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| defect | image AUROC | image AP | image F1-max | pixel AUROC | pixel AP | pixel F1-max | AU-PRO |\n\
             |---|---|---|---|---|---|---|---|\n",
        );
        let rows = self
            .per_defect
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(std::iter::once(("overall", &self.overall)));
        for (name, m) in rows {
            s.push_str(&format!("| {name} |"));
            for v in [
                m.image_auroc,
                m.image_ap,
                m.image_f1_max,
                m.pixel_auroc,
                m.pixel_ap,
                m.pixel_f1_max,
                m.pixel_aupro,
            ] {
                if v.is_finite() {
                    s.push_str(&format!(" {:.1} |", v * 100.0));
                } else {
                    s.push_str(" n/a |");
                }
            }
            s.push('\n');
        }
        s
    }

    /// Pretty JSON, written atomically.
    pub fn save_json(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
}

/// One evaluation image: which accumulator (0 = good, 1.. = defect types), its prediction name.
struct Item<'a> {
    group: usize,
    defect: &'a str,
    entry: &'a SplitEntry,
    height: usize,
    width: usize,
}

/// Scores `pred` against the evaluation half of `split`; see the module doc.
pub fn evaluate(
    split: &SplitManifest,
    pred: &Predictions,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    evaluate_with_progress(split, pred, opts, &mut |_, _| {})
}

/// [`evaluate`], calling `progress(done, total)` after every image read.
pub fn evaluate_with_progress(
    split: &SplitManifest,
    pred: &Predictions,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let names: Vec<&str> = split.defects.keys().map(String::as_str).collect();
    let mut items = Vec::new();
    let lists = std::iter::once((GOOD, &split.eval_good))
        .chain(split.defects.iter().map(|(k, d)| (k.as_str(), &d.test)));
    for (group, (defect, list)) in lists.enumerate() {
        for entry in list {
            let p = split.resolve(&entry.image);
            let (w, h) = image::image_dimensions(&p).map_err(|e| Error::Image {
                path: p.clone(),
                msg: format!("cannot read image size: {e}"),
            })?;
            items.push(Item {
                group,
                defect,
                entry,
                height: h as usize,
                width: w as usize,
            });
        }
    }

    // Image scores first: a missing line fails fast, before any map is read.
    let mut image_scores: Vec<Vec<(f32, bool)>> = vec![Vec::new(); names.len() + 1];
    for it in &items {
        let s = pred.score(it.defect, &it.entry.stem).ok_or_else(|| {
            Error::config(
                pred.dir().join(super::predictions::SCORES_FILE),
                format!("no score for {},{}", it.defect, it.entry.stem),
            )
        })?;
        image_scores[it.group].push((s, it.group != 0));
    }

    let total = items.len() * if opts.bins.is_some() { 2 } else { 1 };
    let mut done = 0;
    let mut accs: Vec<PixelScores> = match opts.bins {
        None => {
            let mut pixels = vec![0usize; names.len() + 1];
            for it in &items {
                pixels[it.group] += it.height * it.width;
            }
            pixels
                .into_iter()
                .map(|n| {
                    let mut a = PixelScores::exact();
                    a.reserve(n);
                    a
                })
                .collect()
        }
        Some(bins) => {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for it in &items {
                let m = read_map(pred, it)?;
                for &v in &m {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
                done += 1;
                progress(done, total);
            }
            (0..=names.len())
                .map(|_| PixelScores::binned(bins, lo, hi))
                .collect()
        }
    };
    for it in &items {
        let map = read_map(pred, it)?;
        let mask = split.load_mask(it.entry)?;
        if (mask.width() as usize, mask.height() as usize) != (it.width, it.height) {
            let p = split.resolve(it.entry.mask.as_deref().unwrap_or(&it.entry.image));
            return Err(Error::Image {
                path: p,
                msg: format!(
                    "mask is {}x{}, its image is {}x{} (W×H)",
                    mask.width(),
                    mask.height(),
                    it.width,
                    it.height
                ),
            });
        }
        let mask: Vec<bool> = mask.iter().map(|&v| v >= 128).collect();
        accs[it.group].add_image(&map, &mask, it.height, it.width)?;
        done += 1;
        progress(done, total);
    }

    let sorted: Vec<SortedPixelScores> = accs.into_par_iter().map(|a| a.into_sorted()).collect();
    // Subsets: each defect type with the good images, then everything.
    let mut subsets: Vec<Vec<usize>> = (1..=names.len()).map(|g| vec![0, g]).collect();
    subsets.push((0..=names.len()).collect());
    let results: Vec<Result<(MetricSet, PixelMetrics)>> = subsets
        .par_iter()
        .map(|groups| {
            let parts: Vec<&SortedPixelScores> = groups.iter().map(|&g| &sorted[g]).collect();
            let px = pixel_metrics(&parts, opts.pro_fpr_limit)?;
            let (s, l): (Vec<f32>, Vec<bool>) = groups
                .iter()
                .flat_map(|&g| image_scores[g].iter().copied())
                .unzip();
            let im = binary_metrics(&s, &l);
            Ok((
                MetricSet {
                    image_auroc: im.auroc,
                    image_ap: im.ap,
                    image_f1_max: im.f1_max,
                    pixel_auroc: px.auroc,
                    pixel_ap: px.ap,
                    pixel_f1_max: px.f1_max,
                    pixel_aupro: px.aupro,
                },
                px,
            ))
        })
        .collect();
    let mut results = results.into_iter().collect::<Result<Vec<_>>>()?;
    let (overall, px) = results.pop().expect("overall subset is always present");
    Ok(EvalReport {
        per_defect: names
            .iter()
            .zip(results)
            .map(|(n, (m, _))| (n.to_string(), m))
            .collect(),
        overall,
        counts: Counts {
            good_images: split.eval_good.len(),
            defect_images: split
                .defects
                .iter()
                .map(|(k, d)| (k.clone(), d.test.len()))
                .collect(),
            pixels: px.pixels,
            positive_pixels: px.positives,
            regions: px.regions,
        },
        options: opts.clone(),
    })
}

/// Reads one map and checks its size against the original image and its values.
fn read_map(pred: &Predictions, it: &Item) -> Result<Vec<f32>> {
    let m = pred.map(it.defect, &it.entry.stem)?;
    let path = pred.map_path(it.defect, &it.entry.stem);
    if (m.height, m.width) != (it.height, it.width) {
        return Err(Error::Image {
            path,
            msg: format!(
                "anomaly map is {}x{} (H×W), expected {}x{}: the size of the original image {}",
                m.height, m.width, it.height, it.width, it.entry.image
            ),
        });
    }
    if m.data.iter().any(|v| v.is_nan()) {
        return Err(Error::Image {
            path,
            msg: "anomaly map contains NaN".into(),
        });
    }
    Ok(m.data)
}
