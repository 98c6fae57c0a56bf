//! Hand-written CPU kernels (candle custom ops with analytic backward) for the hot spots of SD
//! training:
//!
//! - [`conv2d`]: convolution via im2col + `gemm`, or [`winograd`] F(2,3)/F(4,3) for stride-1 3×3
//!   (`ANODIFF_WINOGRAD=0` keeps im2col, `=2` caps at F(2,3)); bias fused;
//! - [`groupnorm`]: fused GroupNorm (+ optional SiLU), also used for LayerNorm over the last dim;
//! - [`attention`]: scaled-dot-product attention over blocks of query rows, no stored score matrix;
//! - [`lowrank`]: a frozen linear layer, alone or with one LoRA term, as a single graph node;
//! - [`geglu`]: the feed-forward gate `a · gelu(b)` with its own backward;
//! - [`adamw`]: the AdamW update in place (no per-op temporaries), bit-identical to the composition;
//! - `gemm` (strided matrix-multiply wrapper) and `simd` (AVX2 element-wise helpers, with
//!   [`force_scalar`] to test the plain paths), shared by the others.
//!
//! Non-CPU devices and dtypes other than f32/f64 fall back to candle's composition.
//! `ANODIFF_KERNELS=candle` disables the kernels at run time (A/B tests, benchmarks).

pub mod adamw;
pub mod attention;
pub mod conv2d;
pub mod geglu;
pub(crate) mod gemm;
pub mod groupnorm;
pub mod lowrank;
pub(crate) mod simd;
pub mod winograd;

pub use simd::force_scalar;

use candle_core::{CpuStorage, DType, Layout, Tensor, WithDType};

/// True unless `ANODIFF_KERNELS=candle` is set.
pub fn enabled() -> bool {
    std::env::var("ANODIFF_KERNELS").map_or(true, |v| v != "candle")
}

/// Whether a tensor can go through our CPU kernels.
pub(crate) fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The contiguous slice of a custom op input (callers make inputs contiguous first).
pub(crate) fn slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Rayon thread count used for the gemm calls.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}
