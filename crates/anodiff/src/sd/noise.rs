//! Where sampling noise comes from. Pipelines draw every random tensor through a `NoiseSource`,
//! in a fixed order, so a seed fully determines the output and parity tests can replay the exact
//! tensors PyTorch drew.

use crate::error::{Error, Result};
use crate::nn::params::gaussian;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use std::collections::VecDeque;

/// Hands out the random tensors of a run, in the order they are asked for.
pub trait NoiseSource {
    /// A standard-normal f32 tensor of the given shape.
    fn draw(&mut self, shape: &[usize], device: &Device) -> Result<Tensor>;
}

/// Standard normal noise from a seeded generator (identical across runs and machines).
pub struct SeededNoise {
    rng: rand::rngs::StdRng,
}

impl SeededNoise {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn draw(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| gaussian(&mut self.rng) as f32).collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}

/// Hands out pre-recorded tensors in order; used to replay a reference run.
pub struct ReplayNoise {
    queue: VecDeque<Tensor>,
}

impl ReplayNoise {
    /// Replays `tensors` in order.
    pub fn new(tensors: Vec<Tensor>) -> Self {
        Self {
            queue: tensors.into(),
        }
    }
    /// Tensors not yet handed out.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl NoiseSource for ReplayNoise {
    fn draw(&mut self, shape: &[usize], _device: &Device) -> Result<Tensor> {
        let t = self.queue.pop_front().ok_or_else(|| {
            Error::invalid("replay noise exhausted: the run drew more noise than recorded")
        })?;
        if t.dims() != shape {
            return Err(Error::invalid(format!(
                "replay noise has shape {:?}, the run asked for {shape:?}",
                t.dims()
            )));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_deterministic_and_standard() {
        let d = Device::Cpu;
        let a = SeededNoise::new(3).draw(&[4, 1000], &d).unwrap();
        let b = SeededNoise::new(3).draw(&[4, 1000], &d).unwrap();
        let c = SeededNoise::new(4).draw(&[4, 1000], &d).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        assert_ne!(a.to_vec2::<f32>().unwrap(), c.to_vec2::<f32>().unwrap());
        let mean = a.mean_all().unwrap().to_scalar::<f32>().unwrap();
        let var = a
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.07,
            "mean {mean} var {var}"
        );
    }

    #[test]
    fn replay_checks_shape_and_exhaustion() {
        let d = Device::Cpu;
        let mut r = ReplayNoise::new(vec![
            Tensor::zeros((2, 3), candle_core::DType::F32, &d).unwrap()
        ]);
        assert!(r.draw(&[3, 2], &d).is_err());
        let mut r = ReplayNoise::new(vec![]);
        assert!(r
            .draw(&[1], &d)
            .unwrap_err()
            .to_string()
            .contains("exhausted"));
    }
}
