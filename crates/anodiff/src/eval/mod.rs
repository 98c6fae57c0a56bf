//! Evaluation toolkit: anomaly-detection metrics, the prediction format any detector writes and
//! its evaluation, anomaly sources (the baselines DualAnoDiff must beat), the downstream
//! localisation network of the generation papers' protocol (METHODS.md A.7) with its multi-seed
//! benchmark, the run-folder layout and HTML report, and LPIPS / IC-LPIPS on user-supplied
//! weights.

pub mod aupro;
pub mod evaluate;
pub mod ic_lpips;
pub mod localisation;
pub mod localisation_bench;
pub mod lpips;
pub mod metrics;
pub mod npy;
pub mod pixels;
pub mod predictions;
pub mod report;
pub mod run;
pub mod sources;
