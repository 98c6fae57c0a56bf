//! Small element-wise helpers written so LLVM vectorises them (no libm calls in the hot loops).

/// e^x for f32 with ~2 ulp error: round-to-nearest by the 1.5·2²³ trick (SSE2-friendly, no
/// `floor` call), Cody–Waite reduction, degree-6 Taylor polynomial, exponent assembled in bits.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.0, 88.0);
    let kf = x * std::f32::consts::LOG2_E + MAGIC;
    let ki = (kf.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let k = kf - MAGIC;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((ki + 127) as u32) << 23)
}

/// Whether the AVX2+FMA copies of the element-wise loops can run (checked once, cached by std).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

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
}
