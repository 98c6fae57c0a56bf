//! Thin safe-ish wrapper over `gemm::gemm` with strided matrix views, shared by the kernels.

use super::threads;
use candle_core::WithDType;
use gemm::Parallelism;

/// A matrix view for `gemm`: pointer, column stride, row stride (in elements).
#[derive(Clone, Copy)]
pub struct Mat<T> {
    pub ptr: *const T,
    pub cs: isize,
    pub rs: isize,
}

impl<T> Mat<T> {
    /// Row-major with leading dimension `ld`.
    pub fn rows(ptr: *const T, ld: usize) -> Self {
        Self {
            ptr,
            cs: 1,
            rs: ld as isize,
        }
    }
    /// The transpose of a row-major matrix with leading dimension `ld`.
    pub fn transposed(ptr: *const T, ld: usize) -> Self {
        Self {
            ptr,
            cs: ld as isize,
            rs: 1,
        }
    }
}

/// `dst[m, n] (row stride ld) = (acc ? dst : 0) + a[m, k] · b[k, n]`, multithreaded.
///
/// # Safety
/// Every view must be valid for the given sizes and strides, `dst` must not alias `a`/`b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    ld: usize,
    acc: bool,
    a: Mat<T>,
    b: Mat<T>,
) {
    matmul_ex(m, n, k, dst, ld, acc, a, b, T::one(), true)
}

/// [`matmul`] with a scale on the product and a choice of threading (`par = false` when the
/// caller already runs in parallel).
///
/// # Safety
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_ex<T: WithDType>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    ld: usize,
    acc: bool,
    a: Mat<T>,
    b: Mat<T>,
    scale: T,
    par: bool,
) {
    let par = if par {
        Parallelism::Rayon(threads())
    } else {
        Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        ld as isize,
        acc,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        T::one(),
        scale,
        false,
        false,
        false,
        par,
    )
}
