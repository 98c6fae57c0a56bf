//! Reproducible randomness for training. The data order is an epoch-wise shuffle whose
//! permutation depends only on (seed, epoch), so its whole state is (epoch, position) and a
//! resumed run continues the same sequence. Per-step randomness (noise, timesteps) comes from
//! [`stream_seed`], a pure function of (seed, step, micro-batch): nothing to save at all.

use crate::error::{Error, Result};
use crate::seed::mix;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// The seed of the random stream for micro-batch `micro` of update `step` in a run seeded `seed`.
pub fn stream_seed(seed: u64, step: u64, micro: u64) -> u64 {
    mix(mix(mix(seed) ^ step) ^ micro.wrapping_add(0x5151))
}

/// Epoch-wise shuffled example order; its state is (epoch, position).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataOrder {
    /// Run seed (with the epoch, it fixes each permutation).
    pub seed: u64,
    /// Number of examples.
    pub len: usize,
    /// Current epoch, from 0.
    pub epoch: u64,
    /// Examples of this epoch already handed out.
    pub pos: usize,
    #[serde(skip)]
    perm: Vec<usize>,
}

/// Equal when they hand out the same sequence from here on (the permutation cache is ignored).
impl PartialEq for DataOrder {
    fn eq(&self, o: &Self) -> bool {
        (self.seed, self.len, self.epoch, self.pos) == (o.seed, o.len, o.epoch, o.pos)
    }
}

impl Eq for DataOrder {}

impl DataOrder {
    /// The order for `len` examples; an empty set is an error.
    pub fn new(seed: u64, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::invalid("the training set is empty"));
        }
        Ok(Self {
            seed,
            len,
            epoch: 0,
            pos: 0,
            perm: Vec::new(),
        })
    }

    /// The example order of `epoch`.
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut p: Vec<usize> = (0..self.len).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(self.seed ^ mix(epoch)));
        p.shuffle(&mut rng);
        p
    }

    /// The next `n` example indices; a batch that crosses an epoch end continues in the next
    /// epoch's order.
    pub fn next_batch(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pos >= self.len {
                self.epoch += 1;
                self.pos = 0;
                self.perm.clear();
            }
            if self.perm.is_empty() {
                self.perm = self.permutation(self.epoch);
            }
            out.push(self.perm[self.pos]);
            self.pos += 1;
        }
        out
    }
}
