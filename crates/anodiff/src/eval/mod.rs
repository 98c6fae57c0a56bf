//! Evaluation toolkit: anomaly-detection metrics, the prediction format any detector writes,
//! anomaly sources (the baselines DualAnoDiff must beat) and the downstream localisation network
//! of the generation papers' protocol (METHODS.md A.7).

pub mod localisation;
pub mod npy;
pub mod sources;
