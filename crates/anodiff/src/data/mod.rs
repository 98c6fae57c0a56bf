//! Datasets: the MVTec-layout reader, the few-shot split, shared augmentation, a procedural
//! synthetic defect dataset, and plain image folders for training.

pub mod augment;
pub mod folder;
pub mod mvtec;
pub mod split;
pub mod subsample;
pub mod synth;
