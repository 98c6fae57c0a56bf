//! AU-PRO (per-region overlap) up to a false-positive-rate limit, normalised by the limit
//! (anomalib's definition, limit 0.3 by default).
//!
//! Regions are the 8-connected components of each ground-truth mask, per image. For a threshold t,
//! PRO(t) = mean over all regions of the fraction of the region's pixels with score ≥ t, and
//! FPR(t) = fraction of all negative pixels (every image) with score ≥ t. The curve starts at
//! (0, 0), has one point per distinct score (ties grouped), and is integrated with trapezoids up
//! to FPR = limit (linear interpolation at the limit), then divided by the limit.
//! No region at all, or no negative pixel → NaN.
//!
//! The exact algorithm sweeps the pixels by descending score once: every positive pixel adds
//! 1/size(region) to the running PRO sum. This file holds the pieces of that sweep (regions, the
//! PRO integrator); the sweep itself, and `aupro` over a set of images, are in the pixel
//! accumulator (`eval::pixels`), which builds on them.

use crate::data::mask_ops::{label, Connectivity};

/// Default FPR limit.
pub const FPR_LIMIT: f64 = 0.3;

/// 8-connected components of a row-major H×W mask. Returns per-pixel labels (0 = background,
/// regions numbered from 1 in raster order of their first pixel) and each region's size
/// (`sizes[label - 1]`).
pub fn label_regions(mask: &[bool], height: usize, width: usize) -> (Vec<u32>, Vec<u32>) {
    debug_assert_eq!(mask.len(), height * width);
    let c = label(mask, width, height, Connectivity::Eight);
    (c.labels, c.sizes.into_iter().map(|s| s as u32).collect())
}

/// Trapezoid integral of PRO over FPR ∈ [0, limit], fed one tie group at a time (descending).
#[derive(Debug, Clone)]
pub struct ProIntegrator {
    limit: f64,
    neg: u64,
    regions: u64,
    fp: u64,
    pro_sum: CompensatedSum,
    prev: (f64, f64),
    area: f64,
    done: bool,
}

impl ProIntegrator {
    /// `neg` negative pixels and `regions` regions in total; `limit` in (0, 1].
    pub fn new(neg: u64, regions: u64, limit: f64) -> Self {
        Self {
            limit,
            neg,
            regions,
            fp: 0,
            pro_sum: CompensatedSum::default(),
            prev: (0.0, 0.0),
            area: 0.0,
            done: false,
        }
    }

    /// One tie group: `fp` negatives and positives whose 1/region-size sum is `pro`.
    pub fn push(&mut self, fp: u64, pro: f64) {
        if self.done || self.neg == 0 || self.regions == 0 {
            return;
        }
        self.fp += fp;
        self.pro_sum.add(pro);
        let x = self.fp as f64 / self.neg as f64;
        // Clamped: rounding in the sum of 1/size must not push PRO above 1.
        let y = (self.pro_sum.value() / self.regions as f64).min(1.0);
        let (px, py) = self.prev;
        if x >= self.limit {
            let y_lim = py + (y - py) * (self.limit - px) / (x - px);
            self.area += (self.limit - px) * (py + y_lim) / 2.0;
            self.done = true;
        } else {
            self.area += (x - px) * (py + y) / 2.0;
        }
        self.prev = (x, y);
    }

    /// AU-PRO normalised by the FPR limit (at most 1); NaN without negatives or regions.
    pub fn finish(self) -> f64 {
        if self.neg == 0 || self.regions == 0 {
            return f64::NAN;
        }
        (self.area / self.limit).min(1.0)
    }
}

/// Neumaier-compensated sum: millions of 1/size terms stay accurate to a few ulps.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompensatedSum {
    sum: f64,
    c: f64,
}

impl CompensatedSum {
    /// Adds `x`.
    pub fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.c += (self.sum - t) + x;
        } else {
            self.c += (x - t) + self.sum;
        }
        self.sum = t;
    }

    /// The compensated total.
    pub fn value(&self) -> f64 {
        self.sum + self.c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_connectivity() {
        // Diagonal neighbours join; the right column is separate.
        let m: Vec<bool> = ["10010", "01010", "00000", "00011"]
            .concat()
            .bytes()
            .map(|b| b == b'1')
            .collect();
        let (labels, sizes) = label_regions(&m, 4, 5);
        assert_eq!(sizes, vec![2, 2, 2]);
        assert_eq!(labels[0], labels[6]);
        assert_ne!(labels[3], labels[0]);
        assert_eq!(labels[18], 3);
    }
}
