//! Exact binary-classification metrics with scikit-learn's conventions: AUROC, average precision
//! and F1-max over (score, label) pairs, plus the ROC and precision–recall curves.
//!
//! Ties: samples with equal scores form one threshold (as in `sklearn.metrics.roc_curve`), so a
//! constant score gives AUROC 0.5. When only one class is present every metric is `f64::NAN`
//! (scikit-learn warns or raises there); reports write it as JSON `null` / "n/a". A NaN score also
//! makes every metric NaN.
//!
//! The metrics are computed in one descending sweep over tie groups ([`Step`]), so the same
//! integrators serve the slice functions here and the memory-bounded pixel accumulator
//! (`eval::pixels`, which builds on this file).

use rayon::slice::ParallelSliceMut;

/// One tie group of a descending sweep: how many positives (`tp`) and negatives (`fp`) have
/// exactly the score `threshold`, and (for AU-PRO) the sum of 1/region-size over its positives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The tied score.
    pub threshold: f32,
    /// Positives with this score.
    pub tp: u64,
    /// Negatives with this score.
    pub fp: u64,
    /// Sum of 1/region-size over the positives (0 when unused).
    pub pro: f64,
}

/// AUROC, AP and F1-max from one pass over the tie groups (scores descending).
#[derive(Debug, Clone)]
pub struct BinaryIntegrator {
    pos: u64,
    neg: u64,
    tp: u64,
    fp: u64,
    /// Twice the ROC area in units of (1 negative × 1 positive): exact integer trapezoids.
    auc2: u128,
    ap: f64,
    f1: f64,
}

/// The three scalar metrics; NaN when a class is missing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BinaryMetrics {
    /// Area under the ROC curve.
    pub auroc: f64,
    /// Average precision (scikit-learn's step-wise sum).
    pub ap: f64,
    /// Best F1 over thresholds.
    pub f1_max: f64,
}

impl BinaryIntegrator {
    /// A sweep over `pos` positives and `neg` negatives in all.
    pub fn new(pos: u64, neg: u64) -> Self {
        Self {
            pos,
            neg,
            tp: 0,
            fp: 0,
            auc2: 0,
            ap: 0.0,
            f1: 0.0,
        }
    }

    /// Adds the next tie group (lower score than the previous one).
    pub fn push(&mut self, tp: u64, fp: u64) {
        if tp == 0 && fp == 0 {
            return;
        }
        let (tp0, tp1) = (self.tp, self.tp + tp);
        self.auc2 += fp as u128 * (tp0 + tp1) as u128;
        self.tp = tp1;
        self.fp += fp;
        let precision = self.tp as f64 / (self.tp + self.fp) as f64;
        // sklearn: AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds.
        self.ap += tp as f64 / self.pos as f64 * precision;
        // F1 = 2PR/(P+R) = 2TP / (TP + FP + #positives).
        let f1 = 2.0 * self.tp as f64 / (self.tp + self.fp + self.pos) as f64;
        if f1 > self.f1 {
            self.f1 = f1;
        }
    }

    /// The metrics of the sweep so far (complete once every group is pushed).
    pub fn finish(self) -> BinaryMetrics {
        if self.pos == 0 || self.neg == 0 {
            return BinaryMetrics {
                auroc: f64::NAN,
                ap: f64::NAN,
                f1_max: f64::NAN,
            };
        }
        BinaryMetrics {
            auroc: self.auc2 as f64 / (2.0 * self.pos as f64 * self.neg as f64),
            ap: self.ap,
            f1_max: self.f1,
        }
    }
}

/// Maps an f32 to a u32 whose unsigned order is the float order (-0.0 is folded into +0.0 so
/// they tie, as in NumPy). NaN must be filtered out before.
pub fn sort_key(v: f32) -> u32 {
    let b = (v + 0.0).to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Inverse of [`sort_key`].
pub fn key_value(k: u32) -> f32 {
    if k & 0x8000_0000 != 0 {
        f32::from_bits(k & 0x7fff_ffff)
    } else {
        f32::from_bits(!k)
    }
}

/// Tie groups of (scores, labels), highest score first. `None` if a score is NaN.
/// (Mismatched lengths use the common prefix; the public functions check lengths.)
pub fn steps(scores: &[f32], labels: &[bool]) -> Option<Vec<Step>> {
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut v: Vec<(u32, bool)> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &l)| (sort_key(s), l))
        .collect();
    v.par_sort_unstable_by(|a, b| b.0.cmp(&a.0));
    let mut out: Vec<Step> = Vec::new();
    for (k, l) in v {
        match out.last_mut() {
            Some(s) if sort_key(s.threshold) == k => {
                if l {
                    s.tp += 1
                } else {
                    s.fp += 1
                }
            }
            _ => out.push(Step {
                threshold: key_value(k),
                tp: l as u64,
                fp: !l as u64,
                pro: 0.0,
            }),
        }
    }
    Some(out)
}

fn nan3() -> BinaryMetrics {
    BinaryMetrics {
        auroc: f64::NAN,
        ap: f64::NAN,
        f1_max: f64::NAN,
    }
}

/// AUROC, AP and F1-max in one pass. NaN if a class is missing, a score is NaN, or the lengths
/// differ.
pub fn binary_metrics(scores: &[f32], labels: &[bool]) -> BinaryMetrics {
    if scores.len() != labels.len() {
        return nan3();
    }
    let Some(steps) = steps(scores, labels) else {
        return nan3();
    };
    let pos = labels.iter().filter(|&&l| l).count() as u64;
    let mut acc = BinaryIntegrator::new(pos, labels.len() as u64 - pos);
    for s in &steps {
        acc.push(s.tp, s.fp);
    }
    acc.finish()
}

/// Area under the ROC curve (exact, ties as one threshold). NaN if only one class is present.
pub fn auroc(scores: &[f32], labels: &[bool]) -> f64 {
    binary_metrics(scores, labels).auroc
}

/// Average precision, scikit-learn's definition: sum over thresholds of (R_n − R_{n−1})·P_n.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> f64 {
    binary_metrics(scores, labels).ap
}

/// Maximum F1 over all thresholds of the precision–recall curve.
pub fn f1_max(scores: &[f32], labels: &[bool]) -> f64 {
    binary_metrics(scores, labels).f1_max
}

/// ROC curve as scikit-learn's `roc_curve(..., drop_intermediate=False)`: a leading (0, 0) point
/// with threshold +inf, then one point per distinct score, descending.
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    /// False-positive rate per point.
    pub fpr: Vec<f64>,
    /// True-positive rate per point.
    pub tpr: Vec<f64>,
    /// Score threshold per point (+inf first).
    pub thresholds: Vec<f32>,
}

/// Precision–recall curve as scikit-learn's `precision_recall_curve`, in sweep order (highest
/// threshold first, i.e. reversed w.r.t. scikit-learn) without its final (P=1, R=0) point.
#[derive(Debug, Clone, PartialEq)]
pub struct PrCurve {
    /// Precision per point.
    pub precision: Vec<f64>,
    /// Recall per point.
    pub recall: Vec<f64>,
    /// Score threshold per point, descending.
    pub thresholds: Vec<f32>,
}

/// `None` if a class is missing, a score is NaN, or the lengths differ.
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Option<RocCurve> {
    let (steps, pos, neg) = checked_steps(scores, labels)?;
    let mut c = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f32::INFINITY],
    };
    let (mut tp, mut fp) = (0u64, 0u64);
    for s in steps {
        tp += s.tp;
        fp += s.fp;
        c.fpr.push(fp as f64 / neg as f64);
        c.tpr.push(tp as f64 / pos as f64);
        c.thresholds.push(s.threshold);
    }
    Some(c)
}

/// `None` if a class is missing, a score is NaN, or the lengths differ.
pub fn pr_curve(scores: &[f32], labels: &[bool]) -> Option<PrCurve> {
    let (steps, pos, _) = checked_steps(scores, labels)?;
    let mut c = PrCurve {
        precision: Vec::with_capacity(steps.len()),
        recall: Vec::with_capacity(steps.len()),
        thresholds: Vec::with_capacity(steps.len()),
    };
    let (mut tp, mut fp) = (0u64, 0u64);
    for s in steps {
        tp += s.tp;
        fp += s.fp;
        c.precision.push(tp as f64 / (tp + fp) as f64);
        c.recall.push(tp as f64 / pos as f64);
        c.thresholds.push(s.threshold);
    }
    Some(c)
}

fn checked_steps(scores: &[f32], labels: &[bool]) -> Option<(Vec<Step>, u64, u64)> {
    if scores.len() != labels.len() {
        return None;
    }
    let pos = labels.iter().filter(|&&l| l).count() as u64;
    let neg = labels.len() as u64 - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    Some((steps(scores, labels)?, pos, neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_key_orders_floats() {
        let v = [
            f32::NEG_INFINITY,
            -2.0,
            -0.5,
            0.0,
            1e-30,
            0.5,
            3.0,
            f32::INFINITY,
        ];
        for w in v.windows(2) {
            assert!(sort_key(w[0]) < sort_key(w[1]));
        }
        assert_eq!(sort_key(-0.0), sort_key(0.0));
        for x in v {
            assert_eq!(key_value(sort_key(x)), x);
        }
    }

    #[test]
    fn simple_cases() {
        let l = [false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &l), 0.75);
        assert_eq!(auroc(&[1.0; 4], &l), 0.5);
        assert!(auroc(&[0.1, 0.2], &[true, true]).is_nan());
        assert!(auroc(&[f32::NAN, 0.2], &[true, false]).is_nan());
        // sklearn: average_precision_score([0,0,1,1],[0.1,0.4,0.35,0.8]) = 0.8333...
        let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &l);
        assert!((ap - 0.8333333333333333).abs() < 1e-15);
        assert_eq!(f1_max(&[0.0, 0.0, 1.0, 1.0], &l), 1.0);
    }
}
