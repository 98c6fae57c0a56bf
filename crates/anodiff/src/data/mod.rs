//! Training data sources.

pub mod folder;
