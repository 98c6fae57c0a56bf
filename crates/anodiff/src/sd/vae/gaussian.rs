//! The encoder's posterior: a diagonal Gaussian over latents (diffusers
//! `DiagonalGaussianDistribution`, non-deterministic case).

use candle_core::{Tensor, D};

/// Per-element Gaussian over latents, from the encoder's moments.
pub struct DiagonalGaussian {
    /// Mean, `[B, C, h, w]`.
    pub mean: Tensor,
    /// Clamped to [-30, 20] as diffusers does, so `exp` never overflows or underflows to 0.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits `[B, 2·C, h, w]` moments into mean (first C channels) and log-variance.
    pub fn from_moments(moments: &Tensor) -> candle_core::Result<Self> {
        let c2 = moments.dim(1)?;
        if !c2.is_multiple_of(2) {
            candle_core::bail!("VAE moments need an even channel count, got {c2}");
        }
        let mean = moments.narrow(1, 0, c2 / 2)?;
        let logvar = moments.narrow(1, c2 / 2, c2 / 2)?.clamp(-30f32, 20f32)?;
        Ok(Self { mean, logvar })
    }

    /// `exp(logvar / 2)`.
    pub fn std(&self) -> candle_core::Result<Tensor> {
        (&self.logvar * 0.5)?.exp()
    }

    /// `exp(logvar)`.
    pub fn var(&self) -> candle_core::Result<Tensor> {
        self.logvar.exp()
    }

    /// `mean + std · noise`; the caller supplies standard-normal `noise` shaped like `mean`.
    pub fn sample(&self, noise: &Tensor) -> candle_core::Result<Tensor> {
        self.mean.add(&self.std()?.mul(noise)?)
    }

    /// The mean (the deterministic latent).
    pub fn mode(&self) -> Tensor {
        self.mean.clone()
    }

    /// KL divergence to N(0, I) per batch row, summed over the latent dimensions: `[B]`.
    pub fn kl(&self) -> candle_core::Result<Tensor> {
        let b = self.mean.dim(0)?;
        let t = ((self.mean.sqr()? + self.var()?)? - 1.0)?.sub(&self.logvar)?;
        t.reshape((b, ()))?.sum(D::Minus1)? * 0.5
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn logvar_is_clamped_and_sample_uses_std() {
        let dev = Device::Cpu;
        // mean = [1, 2], logvar = [-100, 0] → clamped [-30, 0].
        let m = Tensor::new(&[1f32, 2., -100., 0.], &dev)
            .unwrap()
            .reshape((1, 4, 1, 1))
            .unwrap();
        let g = DiagonalGaussian::from_moments(&m).unwrap();
        let lv: Vec<f32> = g.logvar.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(lv, vec![-30.0, 0.0]);
        let noise = Tensor::ones((1, 2, 1, 1), candle_core::DType::F32, &dev).unwrap();
        let s: Vec<f32> = g
            .sample(&noise)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((s[0] - (1.0 + (-15f32).exp())).abs() < 1e-6 && (s[1] - 3.0).abs() < 1e-6);
        // KL = 0.5 · Σ(μ² + σ² − 1 − log σ²) = 0.5 · [(1 + e⁻³⁰ − 1 + 30) + (4 + 1 − 1 − 0)] ≈ 17.
        let kl: Vec<f32> = g.kl().unwrap().to_vec1().unwrap();
        assert!((kl[0] - 17.0).abs() < 1e-5, "{kl:?}");
        assert!(DiagonalGaussian::from_moments(
            &Tensor::zeros((1, 3, 1, 1), candle_core::DType::F32, &dev).unwrap()
        )
        .is_err());
    }
}
