//! anodiff: few-shot defect image generation (DualAnoDiff) and detection (AnomalySD) on
//! Stable-Diffusion-class models, in Rust on candle. See ARCHITECTURE.md for the module map.

#![warn(missing_docs)]

pub mod bench;
pub mod data;
pub mod detect;
pub mod dual;
pub mod error;
pub mod eval;
pub mod io;
pub mod kernels;
pub mod nn;
pub mod runtime;
pub mod sd;
pub mod seed;
pub mod train;

pub use error::{Error, Result};
