//! Splitting a job over machines: `--shard I/N`, or `env/N` to read the index of a Kubernetes
//! Indexed Job / Slurm array task from the environment, so large runs scale out on those engines.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One slice of a job split over machines: work items `b` with `b % count == index` (DualAnoDiff's
/// generation blocks, AnomalySD's evaluation images).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, 0-based.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// The whole run.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N`; `env/N` (or `env`) takes `I` from the environment of a Kubernetes Indexed Job
    /// (`JOB_COMPLETION_INDEX`) or a Slurm array task (`SLURM_ARRAY_TASK_ID` minus
    /// `SLURM_ARRAY_TASK_MIN`, and `N` from `SLURM_ARRAY_TASK_COUNT` when not given).
    pub fn parse(s: &str) -> Result<Self> {
        Self::parse_with(s, &|k| std::env::var(k).ok())
    }

    /// [`Shard::parse`] with an explicit environment (tests).
    pub fn parse_with(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let bad = |why: String| Error::invalid(format!("--shard {s}: {why}"));
        let num = |v: &str, what: &str| -> Result<usize> {
            v.trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("{what} `{v}` is not a whole number")))
        };
        let (i, n) = match s.split_once('/') {
            Some((i, n)) => (i, Some(n)),
            None => (s, None),
        };
        let (index, env_count) = if i == "env" {
            if let Some(k) = env("JOB_COMPLETION_INDEX") {
                (num(&k, "JOB_COMPLETION_INDEX")?, None)
            } else if let Some(k) = env("SLURM_ARRAY_TASK_ID") {
                let min = env("SLURM_ARRAY_TASK_MIN")
                    .map(|m| num(&m, "SLURM_ARRAY_TASK_MIN"))
                    .transpose()?
                    .unwrap_or(0);
                let id = num(&k, "SLURM_ARRAY_TASK_ID")?;
                let count = env("SLURM_ARRAY_TASK_COUNT")
                    .map(|c| num(&c, "SLURM_ARRAY_TASK_COUNT"))
                    .transpose()?;
                (
                    id.checked_sub(min)
                        .ok_or_else(|| bad("task id below SLURM_ARRAY_TASK_MIN".into()))?,
                    count,
                )
            } else {
                return Err(bad(
                    "neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID (Slurm array) is set"
                        .into(),
                ));
            }
        } else {
            (num(i, "shard index")?, None)
        };
        let count = match (n, env_count) {
            (Some(n), _) => num(n, "shard count")?,
            (None, Some(c)) => c,
            (None, None) => return Err(bad("give the shard count as I/N".into())),
        };
        if count == 0 || index >= count {
            return Err(bad(format!("index {index} is not below the count {count}")));
        }
        Ok(Shard { index, count })
    }

    /// The file `stem.ext` of the whole job, or `stem.shard-I-of-N.ext` of this shard.
    pub fn file_name(&self, stem: &str, ext: &str) -> String {
        if self.count == 1 {
            format!("{stem}.{ext}")
        } else {
            format!("{stem}.shard-{}-of-{}.{ext}", self.index, self.count)
        }
    }

    /// Whether work item `i` belongs to this shard.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }
}
