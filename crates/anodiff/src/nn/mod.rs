//! Neural-network building blocks shared by every model. They are written from candle's basic,
//! differentiable ops on purpose: candle-nn's `softmax_last_dim` and fused `LayerNorm` path have no
//! backward, which would silently drop gradients during training.

pub mod conv;
pub mod frozen;
pub mod linear;
pub mod norm;
pub mod ops;
pub mod params;
pub mod tensor_files;

pub use conv::Conv2d;
pub use linear::{Linear, LinearAdapter};
pub use norm::{GroupNorm, LayerNorm};
pub use params::{Init, Params};
pub use tensor_files::TensorFiles;
