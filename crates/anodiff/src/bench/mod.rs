//! Micro-benchmarks of the hot ops (ours vs candle), callable from examples and tools.

pub mod ops;
