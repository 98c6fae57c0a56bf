//! Memory-bounded pixel-level metrics (AUROC, AP, F1-max, AU-PRO) over very many pixels.
//!
//! Exact mode stores 4 bytes per negative pixel (an order-preserving u32 key of its score) and
//! 8 bytes per positive pixel (key + region id), sorts them once, and computes every metric in a
//! single descending sweep. Several accumulators (e.g. the defect-free images and each defect
//! type) can be merged at metric time without copying: [`pixel_metrics`] walks them together.
//!
//! Binned mode (`PixelScores::binned`) keeps fixed-size histograms over [lo, hi]: every bin is
//! treated as one tie group, so the results are APPROXIMATE (error shrinks with more bins).

use super::aupro::{label_regions, CompensatedSum, ProIntegrator};
use super::metrics::{key_value, sort_key, BinaryIntegrator, Step};
use crate::error::{Error, Result};
use rayon::prelude::*;

#[derive(Debug, Clone)]
enum Store {
    Exact {
        neg: Vec<u32>,
        pos: Vec<(u32, u32)>,
        region_sizes: Vec<u32>,
    },
    Binned {
        lo: f32,
        hi: f32,
        neg: Vec<u64>,
        pos: Vec<u64>,
        pro: Vec<f64>,
    },
}

/// Accumulates (score, label, region) of pixels image by image.
#[derive(Debug, Clone)]
pub struct PixelScores {
    store: Store,
    regions: u64,
    has_nan: bool,
}

/// Pixel metrics; NaN where undefined (one class missing, no region, NaN score).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelMetrics {
    /// Pixel AUROC.
    pub auroc: f64,
    /// Pixel average precision.
    pub ap: f64,
    /// Pixel best F1 over thresholds.
    pub f1_max: f64,
    /// AU-PRO up to the FPR limit, normalised.
    pub aupro: f64,
    /// Pixels scored.
    pub pixels: u64,
    /// Defect pixels among them.
    pub positives: u64,
    /// Connected defect regions.
    pub regions: u64,
}

impl PixelScores {
    /// Exact mode (≈4 bytes per pixel).
    pub fn exact() -> Self {
        Self {
            store: Store::Exact {
                neg: Vec::new(),
                pos: Vec::new(),
                region_sizes: Vec::new(),
            },
            regions: 0,
            has_nan: false,
        }
    }

    /// Approximate, fixed-memory mode: `bins` equal-width bins over [lo, hi] (scores outside are
    /// clamped into the end bins).
    pub fn binned(bins: usize, lo: f32, hi: f32) -> Self {
        let bins = bins.max(1);
        Self {
            store: Store::Binned {
                lo,
                hi,
                neg: vec![0; bins],
                pos: vec![0; bins],
                pro: vec![0.0; bins],
            },
            regions: 0,
            has_nan: false,
        }
    }

    /// Reserves room for `pixels` more pixels (exact mode), avoiding growth spikes.
    pub fn reserve(&mut self, pixels: usize) {
        if let Store::Exact { neg, .. } = &mut self.store {
            neg.reserve_exact(pixels);
        }
    }

    /// Adds one image: row-major scores and ground-truth mask of the same H×W size.
    pub fn add_image(
        &mut self,
        scores: &[f32],
        mask: &[bool],
        height: usize,
        width: usize,
    ) -> Result<()> {
        if scores.len() != height * width || mask.len() != height * width {
            return Err(Error::invalid(format!(
                "pixel metrics: {height}x{width} image needs {} scores and mask values, got {} and {}",
                height * width,
                scores.len(),
                mask.len()
            )));
        }
        if scores.iter().any(|s| s.is_nan()) {
            self.has_nan = true;
            return Ok(());
        }
        let (labels, sizes) = label_regions(mask, height, width);
        match &mut self.store {
            Store::Exact {
                neg,
                pos,
                region_sizes,
            } => {
                let base = region_sizes.len() as u32;
                for (&s, &l) in scores.iter().zip(&labels) {
                    if l == 0 {
                        neg.push(sort_key(s));
                    } else {
                        pos.push((sort_key(s), base + l - 1));
                    }
                }
                region_sizes.extend_from_slice(&sizes);
            }
            Store::Binned {
                lo,
                hi,
                neg,
                pos,
                pro,
            } => {
                let n = neg.len();
                for (&s, &l) in scores.iter().zip(&labels) {
                    let b = bin_of(s, *lo, *hi, n);
                    if l == 0 {
                        neg[b] += 1;
                    } else {
                        pos[b] += 1;
                        pro[b] += 1.0 / sizes[l as usize - 1] as f64;
                    }
                }
            }
        }
        self.regions += sizes.len() as u64;
        Ok(())
    }

    /// Sorts (exact mode) so metrics can be computed; the result is read-only and can be merged.
    pub fn into_sorted(self) -> SortedPixelScores {
        let store = match self.store {
            Store::Exact {
                mut neg,
                mut pos,
                region_sizes,
            } => {
                neg.par_sort_unstable();
                pos.par_sort_unstable_by_key(|p| p.0);
                SortedStore::Exact {
                    neg,
                    pos,
                    inv_size: region_sizes.iter().map(|&s| 1.0 / s as f64).collect(),
                }
            }
            Store::Binned {
                lo,
                hi,
                neg,
                pos,
                pro,
            } => SortedStore::Binned {
                lo,
                hi,
                neg,
                pos,
                pro,
            },
        };
        SortedPixelScores {
            store,
            regions: self.regions,
            has_nan: self.has_nan,
        }
    }
}

fn bin_of(s: f32, lo: f32, hi: f32, n: usize) -> usize {
    if hi <= lo {
        return 0;
    }
    let t = ((s as f64 - lo as f64) / (hi as f64 - lo as f64) * n as f64).floor();
    if t.is_nan() || t < 0.0 {
        0
    } else {
        (t as usize).min(n - 1)
    }
}

#[derive(Debug, Clone)]
enum SortedStore {
    Exact {
        neg: Vec<u32>,
        pos: Vec<(u32, u32)>,
        inv_size: Vec<f64>,
    },
    Binned {
        lo: f32,
        hi: f32,
        neg: Vec<u64>,
        pos: Vec<u64>,
        pro: Vec<f64>,
    },
}

/// A finished accumulator (see [`PixelScores::into_sorted`]).
#[derive(Debug, Clone)]
pub struct SortedPixelScores {
    store: SortedStore,
    regions: u64,
    has_nan: bool,
}

impl SortedPixelScores {
    fn counts(&self) -> (u64, u64) {
        match &self.store {
            SortedStore::Exact { neg, pos, .. } => (pos.len() as u64, neg.len() as u64),
            SortedStore::Binned { neg, pos, .. } => (pos.iter().sum(), neg.iter().sum()),
        }
    }
}

/// Pixel metrics of the union of several accumulators (all exact, or all binned alike).
pub fn pixel_metrics(parts: &[&SortedPixelScores], fpr_limit: f64) -> Result<PixelMetrics> {
    let (mut pos, mut neg, mut regions) = (0u64, 0u64, 0u64);
    for p in parts {
        let (a, b) = p.counts();
        pos += a;
        neg += b;
        regions += p.regions;
    }
    let nan = PixelMetrics {
        auroc: f64::NAN,
        ap: f64::NAN,
        f1_max: f64::NAN,
        aupro: f64::NAN,
        pixels: pos + neg,
        positives: pos,
        regions,
    };
    if parts.iter().any(|p| p.has_nan) {
        return Ok(nan);
    }
    let mut bin = BinaryIntegrator::new(pos, neg);
    let mut pro = ProIntegrator::new(neg, regions, fpr_limit);
    let mut visit = |s: Step| {
        bin.push(s.tp, s.fp);
        pro.push(s.fp, s.pro);
    };
    let exact: Vec<_> = parts
        .iter()
        .filter_map(|p| match &p.store {
            SortedStore::Exact { neg, pos, inv_size } => Some((neg, pos, inv_size)),
            _ => None,
        })
        .collect();
    if exact.len() == parts.len() {
        sweep_exact(&exact, &mut visit);
    } else if exact.is_empty() {
        sweep_binned(parts, &mut visit)?;
    } else {
        return Err(Error::invalid(
            "pixel metrics: cannot merge exact and binned accumulators",
        ));
    }
    let b = bin.finish();
    Ok(PixelMetrics {
        auroc: b.auroc,
        ap: b.ap,
        f1_max: b.f1_max,
        aupro: pro.finish(),
        ..nan
    })
}

/// AU-PRO of a set of images: `(scores, mask, height, width)` per image, exact.
/// NaN if there is no region, no negative pixel, or a NaN score.
pub fn aupro(images: &[(&[f32], &[bool], usize, usize)], fpr_limit: f64) -> f64 {
    let mut acc = PixelScores::exact();
    for &(s, m, h, w) in images {
        if acc.add_image(s, m, h, w).is_err() {
            return f64::NAN;
        }
    }
    match pixel_metrics(&[&acc.into_sorted()], fpr_limit) {
        Ok(m) => m.aupro,
        Err(_) => f64::NAN,
    }
}

type ExactPart<'a> = (&'a Vec<u32>, &'a Vec<(u32, u32)>, &'a Vec<f64>);

/// k-way merge of ascending-sorted parts, walked from the top (highest score first).
fn sweep_exact(parts: &[ExactPart], visit: &mut impl FnMut(Step)) {
    let mut ni: Vec<usize> = parts.iter().map(|p| p.0.len()).collect();
    let mut pi: Vec<usize> = parts.iter().map(|p| p.1.len()).collect();
    loop {
        let mut best: Option<u32> = None;
        for (k, p) in parts.iter().enumerate() {
            if ni[k] > 0 {
                best = best.max(Some(p.0[ni[k] - 1]));
            }
            if pi[k] > 0 {
                best = best.max(Some(p.1[pi[k] - 1].0));
            }
        }
        let Some(key) = best else { break };
        let mut step = Step {
            threshold: key_value(key),
            tp: 0,
            fp: 0,
            pro: 0.0,
        };
        let mut pro = CompensatedSum::default();
        for (k, (neg, pos, inv)) in parts.iter().enumerate() {
            let mut i = ni[k];
            while i > 0 && neg[i - 1] == key {
                i -= 1;
            }
            step.fp += (ni[k] - i) as u64;
            ni[k] = i;
            let mut j = pi[k];
            while j > 0 && pos[j - 1].0 == key {
                pro.add(inv[pos[j - 1].1 as usize]);
                j -= 1;
            }
            step.tp += (pi[k] - j) as u64;
            pi[k] = j;
        }
        step.pro = pro.value();
        visit(step);
    }
}

fn sweep_binned(parts: &[&SortedPixelScores], visit: &mut impl FnMut(Step)) -> Result<()> {
    let mut shape = None;
    for p in parts {
        if let SortedStore::Binned { lo, hi, neg, .. } = &p.store {
            let s = (lo.to_bits(), hi.to_bits(), neg.len());
            if shape.is_some_and(|t| t != s) {
                return Err(Error::invalid(
                    "pixel metrics: binned accumulators with different ranges",
                ));
            }
            shape = Some(s);
        }
    }
    let Some((lo, hi, n)) = shape else {
        return Ok(());
    };
    let (lo, hi) = (f32::from_bits(lo) as f64, f32::from_bits(hi) as f64);
    for b in (0..n).rev() {
        let mut step = Step {
            threshold: (lo + (hi - lo) * b as f64 / n as f64) as f32,
            tp: 0,
            fp: 0,
            pro: 0.0,
        };
        for p in parts {
            if let SortedStore::Binned { neg, pos, pro, .. } = &p.store {
                step.tp += pos[b];
                step.fp += neg[b];
                step.pro += pro[b];
            }
        }
        visit(step);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_parts_equal_one_accumulator() {
        let s1 = [0.1f32, 0.9, 0.3, 0.3, 0.7, 0.2];
        let m1 = [false, true, false, true, true, false];
        let s2 = [0.3f32, 0.05, 0.8, 0.3];
        let m2 = [false, false, true, false];
        let mut all = PixelScores::exact();
        all.add_image(&s1, &m1, 2, 3).unwrap();
        all.add_image(&s2, &m2, 2, 2).unwrap();
        let (mut a, mut b) = (PixelScores::exact(), PixelScores::exact());
        a.add_image(&s1, &m1, 2, 3).unwrap();
        b.add_image(&s2, &m2, 2, 2).unwrap();
        let one = pixel_metrics(&[&all.into_sorted()], 0.3).unwrap();
        let two = pixel_metrics(&[&a.into_sorted(), &b.into_sorted()], 0.3).unwrap();
        assert_eq!(one, two);
        let scores: Vec<f32> = s1.iter().chain(&s2).copied().collect();
        let labels: Vec<bool> = m1.iter().chain(&m2).copied().collect();
        assert_eq!(one.auroc, super::super::metrics::auroc(&scores, &labels));
        assert_eq!(one.regions, 2);
    }

    #[test]
    fn perfect_and_constant() {
        let m = [false, true, true, false];
        assert_eq!(aupro(&[(&[0.0, 1.0, 1.0, 0.0], &m, 2, 2)], 0.3), 1.0);
        // Constant scores: one step from (0,0) to (1,1); at FPR 0.3 PRO is 0.3 → area 0.045/0.3.
        let a = aupro(&[(&[0.5; 4], &m, 2, 2)], 0.3);
        assert!((a - 0.15).abs() < 1e-12, "{a}");
        assert!(aupro(&[(&[0.5; 4], &[false; 4], 2, 2)], 0.3).is_nan());
    }
}
