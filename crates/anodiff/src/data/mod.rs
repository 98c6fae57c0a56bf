//! Datasets: the MVTec-layout reader, the few-shot split, shared augmentation and a procedural
//! synthetic defect dataset.

pub mod augment;
pub mod mvtec;
pub mod split;
pub mod synth;
