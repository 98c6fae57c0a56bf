//! Neutral file and format helpers that every layer may use: atomic writes, image files and their
//! tensor form, JSON files, the building blocks of the HTML reports and job shards (`--shard I/N`). Nothing here knows a model,
//! a dataset layout or a training run.

pub mod atomic;
pub mod html;
pub mod image;
pub mod image_tensor;
pub mod json;
pub mod shard;
