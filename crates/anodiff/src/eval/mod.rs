//! Evaluation toolkit: anomaly-detection metrics, the prediction format any detector writes,
//! anomaly sources (the baselines DualAnoDiff must beat) and the downstream localisation network
//! of the generation papers' protocol (METHODS.md A.7).

pub mod aupro;
pub mod evaluate;
pub mod localisation;
pub mod localisation_bench;
pub mod metrics;
pub mod npy;
pub mod pixels;
pub mod predictions;
pub mod report;
pub mod run;
pub mod sources;
