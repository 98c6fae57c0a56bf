//! The downstream localisation network of the anomaly-generation evaluation protocol
//! (METHODS.md A.7): a DRAEM-discriminative-style U-Net trained with focal loss on a 50/50 mix of
//! defect-free images (empty mask) and pairs from an [`AnomalySource`](super::sources::AnomalySource);
//! it then predicts an anomaly map and an image score for every evaluation image of a split.

pub mod focal;
pub mod net;
pub mod predict;
pub mod protocol;
pub mod train;

pub use focal::focal_loss;
pub use net::{LocalisationNet, NetConfig};
pub use predict::{image_score, predict, resize_bilinear};
pub use protocol::Protocol;
pub use train::train;
