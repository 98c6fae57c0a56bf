//! Learning-rate schedules, as multipliers of the peak rate with the semantics of diffusers'
//! `get_scheduler` (transformers' LambdaLR schedules): the factor for an update is evaluated at
//! the number of updates already done, so warmup starts from 0.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule as a factor of the peak rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// Always the peak rate.
    Constant,
    /// Linear ramp from 0 to the peak over `warmup` updates, then constant
    /// (diffusers' `constant_with_warmup`).
    LinearWarmup {
        /// Updates to reach the peak.
        warmup: usize,
    },
    /// Linear warmup, then a half cosine from the peak to 0 at update `total`
    /// (diffusers' `cosine`, `num_cycles = 0.5`); stays at 0 after `total` (where diffusers'
    /// formula would rise again).
    Cosine {
        /// Updates to reach the peak.
        warmup: usize,
        /// Update at which the rate reaches 0.
        total: usize,
    },
}

impl LrSchedule {
    /// The multiplier for the update that follows `done` completed updates.
    pub fn factor(&self, done: usize) -> f64 {
        let warm = |w: usize| {
            if done < w {
                Some(done as f64 / w.max(1) as f64)
            } else {
                None
            }
        };
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::LinearWarmup { warmup } => warm(warmup).unwrap_or(1.0),
            LrSchedule::Cosine { warmup, total } => warm(warmup).unwrap_or_else(|| {
                let progress = ((done - warmup) as f64
                    / (total.saturating_sub(warmup)).max(1) as f64)
                    .min(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }),
        }
    }

    /// The learning rate for the update that follows `done` completed updates.
    pub fn lr(&self, peak: f64, done: usize) -> f64 {
        peak * self.factor(done)
    }
}
