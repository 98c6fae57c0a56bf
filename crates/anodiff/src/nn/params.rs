//! Where model parameters come from. Models ask a `Params` for each weight by its diffusers name
//! (`p.pp("to_q").get(&[out, inp], "weight", init)`); the answer is either a tensor read from a
//! checkpoint or a freshly initialised one, and either frozen or a trainable `Var` that the
//! trainer later collects with `vars()`. One code path builds a model for inference, LoRA
//! fine-tuning and from-scratch pretraining.

use super::tensor_files::TensorFiles;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// How a parameter is initialised when it is not loaded from a checkpoint.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// All zeros (biases, norm shifts).
    Zeros,
    /// All ones (norm scales).
    Ones,
    /// PyTorch's default for Linear/Conv weights and biases: U(-1/√fan_in, 1/√fan_in).
    Uniform {
        /// Half-width of the interval.
        bound: f64,
    },
    /// N(0, std²).
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// Every element the same value (learnable gates and scales).
    Constant(f64),
}

impl Init {
    /// PyTorch default init for a weight or bias whose layer has `fan_in` inputs.
    pub fn torch_default(fan_in: usize) -> Self {
        Init::Uniform {
            bound: 1.0 / (fan_in.max(1) as f64).sqrt(),
        }
    }
}

type Predicate = Box<dyn Fn(&str) -> bool + Send + Sync>;

enum Source {
    Files(TensorFiles),
    Fresh {
        seed: u64,
    },
    /// Zero-cost stand-ins (broadcast scalars) for counting parameters of large configs.
    ShapesOnly,
}

struct Inner {
    source: Source,
    device: Device,
    trainable: Predicate,
    /// Parameters are handed out in this dtype (f32 for models; f64 for gradient checks).
    dtype: DType,
    vars: Mutex<Vec<(String, Var)>>,
    used: Mutex<BTreeSet<String>>,
    /// Total elements handed out (the model's parameter count once it is built).
    elems: std::sync::atomic::AtomicUsize,
}

/// A parameter store viewed under a name prefix; cheap to clone (clones share the store).
#[derive(Clone)]
pub struct Params {
    inner: Arc<Inner>,
    prefix: String,
}

impl Params {
    /// Parameters read from checkpoint tensors; frozen unless `trainable` says otherwise.
    pub fn from_files(files: TensorFiles, device: &Device) -> Self {
        Self::new(Source::Files(files), device, Box::new(|_| false))
    }

    /// Freshly initialised, all trainable. The value of each parameter depends only on `seed` and
    /// its full name, not on construction order.
    pub fn fresh(seed: u64, device: &Device) -> Self {
        Self::new(Source::Fresh { seed }, device, Box::new(|_| true))
    }

    /// A store that only records shapes: building a model with it allocates nothing (every
    /// parameter is a broadcast zero), so `parameter_count` of an SD-sized config is instant.
    pub fn shapes_only(device: &Device) -> Self {
        Self::new(Source::ShapesOnly, device, Box::new(|_| false))
    }

    /// Number of parameter elements handed out so far.
    pub fn parameter_count(&self) -> usize {
        self.inner.elems.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Parameters from in-memory tensors (tests, merged weights).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device) -> Self {
        Self::from_files(TensorFiles::from_tensors(tensors, "<memory>"), device)
    }

    fn new(source: Source, device: &Device, trainable: Predicate) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                device: device.clone(),
                trainable,
                dtype: DType::F32,
                vars: Mutex::new(Vec::new()),
                used: Mutex::new(BTreeSet::new()),
                elems: Default::default(),
            }),
            prefix: String::new(),
        }
    }

    /// Marks loaded parameters whose full name satisfies `pred` as trainable. Must be called before
    /// the model is built (it replaces the store's predicate for every clone made afterwards).
    pub fn with_trainable(self, pred: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        let inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_trainable must be called before cloning Params"));
        Self {
            inner: Arc::new(Inner {
                trainable: Box::new(pred),
                ..inner
            }),
            prefix: self.prefix,
        }
    }

    /// Hands out parameters in `dtype` instead of f32 (finite-difference gradient checks run the
    /// real model code in f64). Must be called before the store is cloned.
    pub fn with_dtype(self, dtype: DType) -> Self {
        let inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_dtype must be called before cloning Params"));
        Self {
            inner: Arc::new(Inner { dtype, ..inner }),
            prefix: self.prefix,
        }
    }

    /// The dtype parameters are handed out in.
    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }

    /// A view under `name` (diffusers' dotted module path).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        Self {
            inner: self.inner.clone(),
            prefix: self.full(&name.to_string()),
        }
    }

    /// The dotted name prefix of this view (empty at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Device parameters live on.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// True when the checkpoint has this tensor (always false for fresh stores). Lets a model
    /// detect optional parameters such as biases.
    pub fn contains(&self, name: &str) -> bool {
        match &self.inner.source {
            Source::Files(f) => f.contains(&self.full(name)),
            Source::Fresh { .. } | Source::ShapesOnly => false,
        }
    }

    /// True for a freshly initialised store.
    pub fn is_fresh(&self) -> bool {
        matches!(self.inner.source, Source::Fresh { .. })
    }

    /// Fetches (or creates) the parameter `name` with the given shape, in the store's dtype.
    pub fn get(&self, shape: &[usize], name: &str, init: Init) -> Result<Tensor> {
        let full = self.full(name);
        let tensor = match &self.inner.source {
            Source::Files(files) => {
                let (t, path) = files.get(&full).ok_or_else(|| Error::MissingTensor {
                    name: full.clone(),
                    looked_in: files.describe(),
                })?;
                if t.dims() != shape {
                    return Err(Error::ShapeMismatch {
                        path: path.to_path_buf(),
                        name: full,
                        expected: shape.to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                t.to_dtype(self.inner.dtype)?
            }
            Source::Fresh { seed } => {
                init_tensor(shape, init, name_seed(*seed, &full), self.device())?
                    .to_dtype(self.inner.dtype)?
            }
            Source::ShapesOnly => {
                Tensor::zeros((), self.inner.dtype, self.device())?.broadcast_as(shape)?
            }
        };
        self.inner.elems.fetch_add(
            shape.iter().product::<usize>(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.inner.used.lock().unwrap().insert(full.clone());
        if (self.inner.trainable)(&full) {
            let var = Var::from_tensor(&tensor)?;
            let t = var.as_tensor().clone();
            self.inner.vars.lock().unwrap().push((full, var));
            Ok(t)
        } else {
            Ok(tensor)
        }
    }

    /// The trainable variables created so far, in creation order, with their full names.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.inner.vars.lock().unwrap().clone()
    }

    /// Checkpoint tensors that no model asked for: a sign of a naming mismatch.
    pub fn unused(&self) -> Vec<String> {
        let used = self.inner.used.lock().unwrap();
        match &self.inner.source {
            Source::Files(f) => {
                let mut v: Vec<String> = f
                    .names()
                    .filter(|n| !used.contains(*n))
                    .map(String::from)
                    .collect();
                v.sort();
                v
            }
            Source::Fresh { .. } | Source::ShapesOnly => Vec::new(),
        }
    }
}

fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    name.hash(&mut h);
    h.finish()
}

fn init_tensor(shape: &[usize], init: Init, seed: u64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let t = match init {
        Init::Zeros => Tensor::zeros(shape, DType::F32, device)?,
        Init::Ones => Tensor::ones(shape, DType::F32, device)?,
        Init::Constant(c) => (Tensor::ones(shape, DType::F32, device)? * c)?,
        Init::Uniform { bound } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let v: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            Tensor::from_vec(v, shape, device)?
        }
        Init::Normal { std } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let v: Vec<f32> = (0..n).map(|_| (gaussian(&mut rng) * std) as f32).collect();
            Tensor::from_vec(v, shape, device)?
        }
    };
    Ok(t)
}

/// Box–Muller standard normal; avoids pulling rand_distr in for one distribution.
pub(crate) fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_params_depend_on_name_not_order() {
        let dev = Device::Cpu;
        let a = Params::fresh(7, &dev);
        let x1 = a.pp("m").get(&[3, 4], "w", Init::torch_default(4)).unwrap();
        let b = Params::fresh(7, &dev);
        let _other = b.get(&[2], "zzz", Init::Normal { std: 1.0 }).unwrap();
        let x2 = b.pp("m").get(&[3, 4], "w", Init::torch_default(4)).unwrap();
        let d = (x1 - x2).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(a.vars().len(), 1);
    }

    #[test]
    fn loaded_shape_mismatch_names_tensor_and_shapes() {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        m.insert(
            "a.weight".to_string(),
            Tensor::zeros((2, 3), DType::F16, &dev).unwrap(),
        );
        let p = Params::from_tensors(m, &dev);
        let err = p
            .pp("a")
            .get(&[3, 2], "weight", Init::Zeros)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.weight") && err.contains("[3, 2]") && err.contains("[2, 3]"),
            "{err}"
        );
        let err = p.get(&[1], "b.bias", Init::Zeros).unwrap_err().to_string();
        assert!(err.contains("b.bias"), "{err}");
        // f16 on disk comes out as f32.
        let t = p.pp("a").get(&[2, 3], "weight", Init::Zeros).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert!(p.vars().is_empty());
    }

    #[test]
    fn trainable_predicate_makes_vars() {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        m.insert(
            "x.w".to_string(),
            Tensor::zeros(2, DType::F32, &dev).unwrap(),
        );
        m.insert(
            "y.w".to_string(),
            Tensor::zeros(2, DType::F32, &dev).unwrap(),
        );
        let p = Params::from_tensors(m, &dev).with_trainable(|n| n.starts_with("y."));
        p.get(&[2], "x.w", Init::Zeros).unwrap();
        p.get(&[2], "y.w", Init::Zeros).unwrap();
        let names: Vec<_> = p.vars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["y.w".to_string()]);
        assert!(p.unused().is_empty());
    }
}
