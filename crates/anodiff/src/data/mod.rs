//! Datasets: the MVTec-layout reader, the few-shot split, shared augmentation, a procedural
//! synthetic defect dataset, canvas images (a random region of an image on
//! mid-grey, for pretraining), plain image folders for training, foreground (object) masks, mask
//! folders matched by image name, weight-free map/mask operations (`mask_ops`), and evenly spaced
//! picks of a sorted list for display (`subsample`).

pub mod augment;
pub mod canvas;
pub mod folder;
pub mod foreground;
pub mod mask_folder;
pub mod mask_ops;
pub mod mvtec;
pub mod split;
pub mod subsample;
pub mod synth;
