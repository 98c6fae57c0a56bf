//! Classifier-free guidance: the batch holds [unconditional; conditional] halves (diffusers' order)
//! and the prediction is pushed away from the unconditional one.

use candle_core::Tensor;

/// `uncond + scale · (cond − uncond)` where `pred = [uncond; cond]` along dim 0.
pub fn apply_cfg(pred: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let n = pred.dim(0)? / 2;
    let uncond = pred.narrow(0, 0, n)?;
    let cond = pred.narrow(0, n, n)?;
    &uncond + ((&cond - &uncond)? * scale)?
}

/// Guidance only has an effect above 1 (diffusers skips the unconditional pass otherwise).
pub fn uses_cfg(scale: f64) -> bool {
    scale > 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cfg_formula() {
        let p = Tensor::new(&[[1f32, 2.0], [3.0, 6.0]], &Device::Cpu).unwrap();
        let g = apply_cfg(&p, 2.5).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, vec![vec![1.0 + 2.5 * 2.0, 2.0 + 2.5 * 4.0]]);
        assert!(!uses_cfg(1.0) && uses_cfg(1.5));
    }
}
