//! Small element-wise helpers written so LLVM vectorises them (no libm calls in the hot loops).

/// Constants of the f32 exp shared by [`exp_f32`] and [`exp8_avx2`]: round-to-nearest magic
/// 1.5·2²³, ln 2 split for Cody–Waite, and the Taylor coefficients after the leading 1/6! in
/// Horner order.
const EXP_MAGIC: f32 = 12_582_912.0;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
const EXP_TAYLOR: [f32; 6] = [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];

/// e^x for f32 with ~2 ulp error: round-to-nearest by the 1.5·2²³ trick (SSE2-friendly, no
/// `floor` call), Cody–Waite reduction, degree-6 Taylor polynomial, exponent assembled in bits.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let kf = x * std::f32::consts::LOG2_E + EXP_MAGIC;
    let ki = (kf.to_bits() as i32).wrapping_sub(EXP_MAGIC.to_bits() as i32);
    let k = kf - EXP_MAGIC;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = EXP_TAYLOR.iter().fold(1.0 / 720.0, |p, &c| p * r + c);
    p * f32::from_bits(((ki + 127) as u32) << 23)
}

/// Eight `exp_f32` at once with AVX2+FMA: the same reduction and polynomial as [`exp_f32`], with
/// fused multiply-adds (so the bits may differ from the scalar form by an ulp). Inputs must be
/// ≤ 88 (callers pass `x − max ≤ 0`); below −87 they are clamped like the scalar form.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp8_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let kf = _mm256_fmadd_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
        _mm256_set1_ps(EXP_MAGIC),
    );
    let ki = _mm256_sub_epi32(
        _mm256_castps_si256(kf),
        _mm256_castps_si256(_mm256_set1_ps(EXP_MAGIC)),
    );
    let k = _mm256_sub_ps(kf, _mm256_set1_ps(EXP_MAGIC));
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in EXP_TAYLOR {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(ki, _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
}

/// Numerator (odd: `x·P(x²)`) and denominator (`Q(x²)`) coefficients of [`erf_f32`], lowest
/// degree first: a rational fit of erf on [0, 4] made for this crate by iterated weighted least
/// squares (max error 2e-8 in f64 arithmetic, 3e-7 evaluated in f32).
const ERF_P: [f32; 6] = [
    std::f32::consts::FRAC_2_SQRT_PI, // the fit gives 1.128_378_98: erf'(0) itself
    0.196_234_31,
    0.053_465_657,
    0.004_003_044,
    0.000_288_032_5,
    1.975_005_6e-6,
];
const ERF_Q: [f32; 6] = [
    1.0,
    0.507_239_3,
    0.116_470_47,
    0.015_443_221,
    0.001_216_222_2,
    3.748_221e-5,
];

/// erf(x) for f32 within 4e-7 absolute (`tests` below): `x·P(x²)/Q(x²)` on x clamped to
/// [-4, 4] (beyond, erf is ±1 in f32). Branch-free, so loops over it vectorise, unlike libm's
/// `erff` (a scalar call with branches per element).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let t = x * x;
    let p = ERF_P.iter().rev().fold(0.0, |acc, &c| acc * t + c);
    let q = ERF_Q.iter().rev().fold(0.0, |acc, &c| acc * t + c);
    x * p / q
}

/// Set by [`force_scalar`]: every kernel then takes its plain path.
static FORCE_SCALAR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the kernels take their plain (non-AVX2) paths from now on, process-wide: for tests that
/// compare both paths (run them in their own test binary) and for A/B measurements.
pub fn force_scalar(on: bool) {
    FORCE_SCALAR.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the AVX2+FMA copies of the element-wise loops can run (the CPU check is cached by std).
pub fn has_avx2() -> bool {
    if FORCE_SCALAR.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `$body` compiled with AVX2+FMA when the CPU has them, else as plain code: one source for
/// both (no FMA contraction happens in Rust, so both give the same bits).
macro_rules! simd_dispatch {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn fast<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if $crate::kernels::simd::has_avx2() {
                // SAFETY: the CPU supports the enabled features (checked just above).
                unsafe {
                    fast(
                        #[inline(always)]
                        || $body,
                    )
                }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}
pub(crate) use simd_dispatch;

/// Logistic sigmoid in the working precision; f32 uses the fast exp above.
pub trait Sigmoid: Copy {
    fn sigmoid(self) -> Self;
}

impl Sigmoid for f32 {
    #[inline(always)]
    fn sigmoid(self) -> f32 {
        1.0 / (1.0 + exp_f32(-self))
    }
}

impl Sigmoid for f64 {
    #[inline(always)]
    fn sigmoid(self) -> f64 {
        1.0 / (1.0 + (-self).exp())
    }
}

/// e^x in the working precision; f32 uses the fast exp above.
pub trait FastExp: Copy {
    fn fexp(self) -> Self;
}

impl FastExp for f32 {
    #[inline(always)]
    fn fexp(self) -> f32 {
        exp_f32(self)
    }
}

impl FastExp for f64 {
    #[inline(always)]
    fn fexp(self) -> f64 {
        self.exp()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_std() {
        let mut worst = 0f32;
        for i in -8700..8800 {
            let x = i as f32 * 0.01;
            let rel = ((super::exp_f32(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 1e-6, "exp_f32 rel err {worst}");
    }

    #[test]
    fn erf_matches_libm() {
        let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let want = libm::erf(x as f64);
            let got = super::erf_f32(x) as f64;
            worst_abs = worst_abs.max((got - want).abs());
            if x != 0.0 {
                worst_rel = worst_rel.max(((got - want) / want).abs());
            }
        }
        assert!(worst_abs < 4e-7, "erf_f32 abs err {worst_abs}");
        // Near 0 erf(x) ≈ 1.128·x: the relative error stays at f32 rounding level there too.
        assert!(worst_rel < 1e-6, "erf_f32 rel err {worst_rel}");
        assert!((super::erf_f32(f32::INFINITY) - 1.0).abs() < 4e-7);
        assert!((super::erf_f32(-1e30) + 1.0).abs() < 4e-7);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp8_avx2_matches_std() {
        if !super::has_avx2() {
            return;
        }
        let mut worst = 0f32;
        for i in (-8700..100).step_by(8) {
            let x: [f32; 8] = std::array::from_fn(|l| (i + l as i32) as f32 * 0.01);
            let mut y = [0f32; 8];
            // SAFETY: AVX2+FMA checked above; the arrays hold 8 floats.
            unsafe {
                use std::arch::x86_64::*;
                let v = super::exp8_avx2(_mm256_loadu_ps(x.as_ptr()));
                _mm256_storeu_ps(y.as_mut_ptr(), v);
            }
            for (a, b) in x.iter().zip(y) {
                worst = worst.max(((b - a.exp()) / a.exp()).abs());
            }
        }
        assert!(worst < 1e-6, "exp8_avx2 rel err {worst}");
    }
}
