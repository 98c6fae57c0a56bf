//! Datasets: the MVTec-layout reader, the few-shot split, shared augmentation, a procedural
//! synthetic defect dataset, plain image folders for training, and evenly spaced picks of a
//! sorted list for display (`subsample`).

pub mod augment;
pub mod folder;
pub mod mvtec;
pub mod split;
pub mod subsample;
pub mod synth;
