//! The training loop. Per update: draw `grad_accum` micro-batches in the seeded data order, run
//! the caller's loss closure and `backward()` on each, average the gradients, stop on a NaN/Inf
//! loss or gradient (naming the step; weights untouched, last checkpoint intact), clip by global
//! norm, take an AdamW step at the scheduled learning rate, log, and checkpoint every N updates.
//! Only the `Var`s handed to the trainer get gradients and optimiser state; frozen model
//! parameters are plain tensors, so candle keeps no gradient buffers for them.

use super::checkpoint;
use super::grads::Grads;
use super::log::{peak_rss_bytes, JsonLog};
use super::optim::{AdamW, AdamWConfig};
use super::order::{stream_seed, DataOrder};
use super::schedule::LrSchedule;
use crate::error::{Error, Result};
use crate::runtime::Lanes;
use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Total optimiser updates of the run (a resumed run continues up to this number).
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches averaged into one update.
    pub grad_accum: usize,
    /// Seeds the data order and every per-step random stream.
    pub seed: u64,
    /// AdamW settings (its `lr` is the peak rate).
    pub optimizer: AdamWConfig,
    /// How the rate varies over the run.
    pub lr_schedule: LrSchedule,
    /// Clip the global gradient norm to this value (None: no clipping; the norm is still logged).
    pub max_grad_norm: Option<f64>,
    /// Checkpoint every this many updates (0: only at the end of `run`).
    pub checkpoint_every: usize,
    /// Checkpoint directories kept (the newest ones; at least 1).
    pub keep_checkpoints: usize,
    /// Run directory for checkpoints and `train_log.jsonl` (None: nothing is written).
    pub out_dir: Option<PathBuf>,
}

/// Examples per micro-batch when `job` computes `batch` examples per update as `micro_batches`
/// equal micro-batches (its `TrainConfig::batch_size`, with `grad_accum = micro_batches`); an
/// error naming the job when the split is not exact.
pub fn micro_batch_size(job: &str, batch: usize, micro_batches: usize) -> Result<usize> {
    if micro_batches == 0 || batch == 0 || !batch.is_multiple_of(micro_batches) {
        return Err(Error::invalid(format!(
            "{job}: batch {batch} must be a positive multiple of micro-batches {micro_batches}"
        )));
    }
    Ok(batch / micro_batches)
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 1,
            grad_accum: 1,
            seed: 0,
            optimizer: AdamWConfig::default(),
            lr_schedule: LrSchedule::Constant,
            max_grad_norm: Some(1.0),
            checkpoint_every: 500,
            keep_checkpoints: 1,
            out_dir: None,
        }
    }
}

impl TrainConfig {
    /// `steps` AdamW updates at peak rate `lr` (default betas and weight decay), linear warmup
    /// over `warmup` updates then cosine decay to 0, gradient norm clipped at 1 — the recipe of
    /// the from-scratch and fine-tuning jobs; set the rest with struct update syntax.
    pub fn cosine(steps: usize, lr: f64, warmup: usize) -> Self {
        Self {
            steps,
            optimizer: AdamWConfig {
                lr,
                ..AdamWConfig::default()
            },
            lr_schedule: LrSchedule::Cosine {
                warmup,
                total: steps,
            },
            max_grad_norm: Some(1.0),
            ..Self::default()
        }
    }
}

/// What the loss closure gets for one micro-batch.
pub struct Batch {
    /// The update being computed, counted from 1.
    pub step: usize,
    /// Micro-batch index within the update (0..grad_accum).
    pub micro: usize,
    /// Example indices into the caller's dataset.
    pub indices: Vec<usize>,
    /// Seed of this micro-batch's random stream (noise, timesteps): a pure function of the run
    /// seed, `step` and `micro`, so a resumed run draws the same numbers.
    pub seed: u64,
}

impl Batch {
    /// A generator seeded with [`Batch::seed`].
    pub fn rng(&self) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(self.seed)
    }
}

/// Figures of one completed update, given to the progress callback and written to the log.
#[derive(Clone, Debug, Serialize)]
pub struct StepStats {
    /// This update, counted from 1.
    pub step: usize,
    /// Updates of the whole run.
    pub total_steps: usize,
    /// Mean of the micro-batch losses.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall time of this update.
    pub secs: f64,
    /// Updates per second since this process started training.
    pub its_per_sec: f64,
    /// Peak resident memory of the process, where /proc reports it.
    pub peak_rss_bytes: Option<u64>,
}

type Progress = Box<dyn FnMut(&StepStats)>;

/// The training loop over a set of trainable `Var`s (see the module doc).
pub struct Trainer {
    cfg: TrainConfig,
    opt: AdamW,
    order: DataOrder,
    step: usize,
    metadata: serde_json::Value,
    log: Option<JsonLog>,
    progress: Option<Progress>,
    started: Option<(Instant, usize)>,
    last_checkpoint: Option<PathBuf>,
    /// One single-thread pool per core for [`Trainer::train_step_par`] (made on first use).
    lanes: Option<Lanes>,
}

impl Trainer {
    /// A trainer over `vars` (the trainable variables, by unique name) for a dataset of
    /// `num_examples` examples.
    pub fn new(cfg: TrainConfig, vars: Vec<(String, Var)>, num_examples: usize) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.grad_accum == 0 {
            return Err(Error::invalid(
                "batch_size and grad_accum must be at least 1",
            ));
        }
        if vars.is_empty() {
            return Err(Error::invalid("no trainable variables to optimise"));
        }
        let order = DataOrder::new(cfg.seed, num_examples)?;
        let log = match &cfg.out_dir {
            Some(d) => Some(JsonLog::append(&d.join("train_log.jsonl"))?),
            None => None,
        };
        Ok(Self {
            opt: AdamW::new(vars, cfg.optimizer.clone())?,
            order,
            step: 0,
            metadata: serde_json::Value::Null,
            log,
            progress: None,
            started: None,
            last_checkpoint: None,
            lanes: None,
            cfg,
        })
    }

    /// Free-form JSON stored in every checkpoint's `config.json` (base model, LoRA rank, …).
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Called after every update.
    pub fn on_progress(&mut self, f: impl FnMut(&StepStats) + 'static) {
        self.progress = Some(Box::new(f));
    }

    /// Completed updates.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The trained variables.
    pub fn vars(&self) -> &[(String, Var)] {
        self.opt.vars()
    }

    /// The optimiser and its state.
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// The data order and where it stands.
    pub fn data_order(&self) -> &DataOrder {
        &self.order
    }

    /// The last checkpoint written or resumed from, if any.
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }

    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "train": self.cfg,
            "num_examples": self.order.len,
            "metadata": self.metadata,
        })
    }

    /// Restores weights, optimiser state, step and data order from a checkpoint (`dir`: a
    /// checkpoint directory or a run directory). The run must use the same variables, seed,
    /// batch size, accumulation and dataset size, or continuing would not reproduce the run.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let device = self
            .opt
            .vars()
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu);
        let ck = checkpoint::load(dir, &device)?;
        let state_path = ck.dir.join("state.json");
        let cfg_path = ck.dir.join("config.json");
        let saved: TrainConfig = serde_json::from_value(ck.config["train"].clone())
            .map_err(|e| Error::config(&cfg_path, e))?;
        let mismatch = |what: &str, saved: String, now: String| {
            Error::config(
                &cfg_path,
                format!(
                    "{what} was {saved} in the checkpointed run, now {now}: cannot resume exactly"
                ),
            )
        };
        if saved.seed != self.cfg.seed {
            return Err(mismatch(
                "seed",
                saved.seed.to_string(),
                self.cfg.seed.to_string(),
            ));
        }
        if saved.batch_size != self.cfg.batch_size {
            return Err(mismatch(
                "batch_size",
                saved.batch_size.to_string(),
                self.cfg.batch_size.to_string(),
            ));
        }
        if saved.grad_accum != self.cfg.grad_accum {
            return Err(mismatch(
                "grad_accum",
                saved.grad_accum.to_string(),
                self.cfg.grad_accum.to_string(),
            ));
        }
        if ck.state.data_order.len != self.order.len || ck.state.data_order.seed != self.cfg.seed {
            return Err(mismatch(
                "the dataset size",
                ck.state.data_order.len.to_string(),
                self.order.len.to_string(),
            ));
        }
        // Every variable, and nothing else, must be in the checkpoint.
        let names: HashSet<&str> = self.opt.vars().iter().map(|(n, _)| n.as_str()).collect();
        if let Some(extra) = ck.weights.keys().find(|k| !names.contains(k.as_str())) {
            return Err(Error::config(
                ck.dir.join("weights.safetensors"),
                format!("tensor `{extra}` is not a trainable variable of this run"),
            ));
        }
        let origin = ck.dir.join("weights.safetensors").display().to_string();
        let mut values = Vec::with_capacity(names.len());
        for (name, var) in self.opt.vars() {
            let t = ck.weights.get(name).ok_or_else(|| Error::MissingTensor {
                name: name.clone(),
                looked_in: origin.clone(),
            })?;
            if t.dims() != var.dims() {
                return Err(Error::ShapeMismatch {
                    path: origin.clone().into(),
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            values.push(t.to_dtype(DType::F32)?);
        }
        let opt_origin = ck.dir.join("optimizer.safetensors").display().to_string();
        self.opt
            .load_state(&ck.optimizer, &ck.state.adam_steps, &opt_origin)?;
        for ((_, var), t) in self.opt.vars().iter().zip(values) {
            var.set(&t)?;
        }
        if ck.state.step > self.cfg.steps {
            return Err(Error::config(
                &state_path,
                format!(
                    "checkpoint is at step {}, beyond the run's {} steps",
                    ck.state.step, self.cfg.steps
                ),
            ));
        }
        self.step = ck.state.step;
        self.order = ck.state.data_order;
        self.last_checkpoint = Some(ck.dir);
        Ok(())
    }

    /// Writes a checkpoint now (no-op without `out_dir`).
    pub fn save_checkpoint(&mut self) -> Result<Option<PathBuf>> {
        let Some(out) = self.cfg.out_dir.clone() else {
            return Ok(None);
        };
        let p = checkpoint::save(
            &out,
            self.step,
            &self.opt,
            &self.order,
            &self.config_json(),
            self.cfg.keep_checkpoints,
        )?;
        self.last_checkpoint = Some(p.clone());
        Ok(Some(p))
    }

    fn stop(&self, step: usize, what: String) -> Error {
        let ck = match &self.last_checkpoint {
            Some(p) => format!("last good checkpoint: {}", p.display()),
            None => "no checkpoint was written".to_string(),
        };
        Error::invalid(format!(
            "training stopped at step {step}: {what}; weights not updated ({ck})"
        ))
    }

    /// One optimiser update. `loss_fn` returns the scalar loss of a micro-batch (a mean over its
    /// examples, so accumulating k micro-batches of n equals one batch of k·n).
    pub fn train_step<F>(&mut self, loss_fn: &mut F) -> Result<StepStats>
    where
        F: FnMut(&Batch) -> Result<Tensor>,
    {
        self.update(|vars, batches| {
            batches
                .iter()
                .map(|b| micro_grads(b, loss_fn(b), vars))
                .collect()
        })
    }

    /// Like [`Trainer::train_step`], with the micro-batches of the update computed side by
    /// side, one per core (each on its own thread with every op of it run inline, see
    /// [`candle_core::utils::serial`]). The result is bit-identical to `train_step`: each
    /// micro-batch is computed the same way and the gradients are added in micro-batch order.
    /// Why: the small networks trained on a CPU leave a core idle in their many small ops;
    /// two independent halves of a batch keep both busy. With one worker thread, or one
    /// micro-batch, the micro-batches run one after the other as in `train_step`.
    pub fn train_step_par<F>(&mut self, loss_fn: &F) -> Result<StepStats>
    where
        F: Fn(&Batch) -> Result<Tensor> + Sync,
    {
        let lanes = self.cfg.grad_accum.min(rayon::current_num_threads());
        if self.lanes.as_ref().is_none_or(|l| l.len() != lanes.max(1)) {
            self.lanes = Some(
                Lanes::new(lanes)
                    .map_err(|e| Error::invalid(format!("starting training threads: {e}")))?,
            );
        }
        let pools = self.lanes.take().expect("made above");
        let out = self.update(|vars, batches| {
            pools.map(batches.len(), |i| {
                micro_grads(&batches[i], loss_fn(&batches[i]), vars)
            })
        });
        self.lanes = Some(pools);
        out
    }

    /// The update around `grads_of`, which turns this update's micro-batches into their loss
    /// values and gradients (in micro-batch order).
    fn update<G>(&mut self, grads_of: G) -> Result<StepStats>
    where
        G: FnOnce(&[(String, Var)], &[Batch]) -> Vec<Result<(f64, Grads)>>,
    {
        let t0 = Instant::now();
        let (run_start, run_start_step) = *self.started.get_or_insert((t0, self.step));
        let step = self.step + 1;
        let k = self.cfg.grad_accum;
        let mut order = self.order.clone();
        let batches: Vec<Batch> = (0..k)
            .map(|micro| Batch {
                step,
                micro,
                indices: order.next_batch(self.cfg.batch_size),
                seed: stream_seed(self.cfg.seed, step as u64, micro as u64),
            })
            .collect();
        let mut grads: Option<Grads> = None;
        let mut loss_sum = 0.0;
        for (micro, r) in grads_of(self.opt.vars(), &batches).into_iter().enumerate() {
            let (value, g) = r?;
            if !value.is_finite() {
                return Err(self.stop(step, format!("loss is {value} (micro-batch {micro})")));
            }
            loss_sum += value;
            match grads.as_mut() {
                Some(acc) => acc.accumulate(g)?,
                None => grads = Some(g),
            }
        }
        let mut grads = grads.expect("grad_accum >= 1");
        if (0..grads.len()).all(|i| grads.get(i).is_none()) {
            return Err(Error::invalid(format!(
                "step {step}: the loss does not depend on any trainable variable"
            )));
        }
        grads.scale(1.0 / k as f64)?;
        if let Some(i) = grads.first_non_finite()? {
            let name = &self.opt.vars()[i].0;
            return Err(self.stop(step, format!("gradient of `{name}` is not finite")));
        }
        let grad_norm = match self.cfg.max_grad_norm {
            Some(max) => grads.clip_global_norm(max)?,
            None => grads.global_norm()?,
        };
        let lr = self.cfg.lr_schedule.lr(self.cfg.optimizer.lr, self.step);
        self.opt.step(&grads, lr)?;
        self.step = step;
        self.order = order;
        let now = Instant::now();
        let stats = StepStats {
            step,
            total_steps: self.cfg.steps,
            loss: loss_sum / k as f64,
            lr,
            grad_norm,
            secs: (now - t0).as_secs_f64(),
            its_per_sec: (step - run_start_step) as f64 / (now - run_start).as_secs_f64().max(1e-9),
            peak_rss_bytes: peak_rss_bytes(),
        };
        if let Some(log) = self.log.as_mut() {
            log.write(&serde_json::json!({
                "step": stats.step,
                "loss": stats.loss,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "secs": stats.secs,
                "its_per_sec": stats.its_per_sec,
                "peak_rss_mb": stats.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0)),
            }))?;
        }
        if let Some(cb) = self.progress.as_mut() {
            cb(&stats);
        }
        Ok(stats)
    }

    /// Trains until `steps` updates are done, checkpointing every `checkpoint_every` updates and
    /// at the end. Returns the figures of the updates run by this call.
    pub fn run<F>(&mut self, loss_fn: F) -> Result<Vec<StepStats>>
    where
        F: FnMut(&Batch) -> Result<Tensor>,
    {
        self.run_with(loss_fn, |_| Ok(()))
    }

    /// Like [`Trainer::run`], with each update's micro-batches computed side by side
    /// ([`Trainer::train_step_par`]; the same results as `run`).
    pub fn run_par<F>(&mut self, loss_fn: F) -> Result<Vec<StepStats>>
    where
        F: Fn(&Batch) -> Result<Tensor> + Sync,
    {
        self.run_with_par(loss_fn, |_| Ok(()))
    }

    /// Like [`Trainer::run`], calling `after_step(step)` after every update (and its checkpoint):
    /// sample grids, validation. An error stops the run.
    pub fn run_with<F, H>(&mut self, mut loss_fn: F, after_step: H) -> Result<Vec<StepStats>>
    where
        F: FnMut(&Batch) -> Result<Tensor>,
        H: FnMut(usize) -> Result<()>,
    {
        self.run_loop(|t| t.train_step(&mut loss_fn), after_step)
    }

    /// Like [`Trainer::run_with`], with each update's micro-batches computed side by side
    /// ([`Trainer::train_step_par`]; the same results as `run_with`).
    pub fn run_with_par<F, H>(&mut self, loss_fn: F, after_step: H) -> Result<Vec<StepStats>>
    where
        F: Fn(&Batch) -> Result<Tensor> + Sync,
        H: FnMut(usize) -> Result<()>,
    {
        self.run_loop(|t| t.train_step_par(&loss_fn), after_step)
    }

    fn run_loop<S, H>(&mut self, mut step: S, mut after_step: H) -> Result<Vec<StepStats>>
    where
        S: FnMut(&mut Self) -> Result<StepStats>,
        H: FnMut(usize) -> Result<()>,
    {
        let mut out = Vec::with_capacity(self.cfg.steps.saturating_sub(self.step));
        let mut saved_at = None;
        while self.step < self.cfg.steps {
            out.push(step(self)?);
            let every = self.cfg.checkpoint_every;
            if every > 0 && self.step.is_multiple_of(every) {
                self.save_checkpoint()?;
                saved_at = Some(self.step);
            }
            after_step(self.step)?;
        }
        if saved_at != Some(self.step) && !out.is_empty() {
            self.save_checkpoint()?;
        }
        Ok(out)
    }
}

/// The loss value and gradients of one micro-batch (`loss` as the closure returned it). A
/// non-finite value is returned as is (the caller stops the run) and gets no backward pass.
fn micro_grads(b: &Batch, loss: Result<Tensor>, vars: &[(String, Var)]) -> Result<(f64, Grads)> {
    let loss = loss?;
    if loss.elem_count() != 1 {
        return Err(Error::invalid(format!(
            "step {}: the loss must be a scalar, got shape {:?}",
            b.step,
            loss.dims()
        )));
    }
    let value = loss.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
    if !value.is_finite() {
        return Ok((
            value,
            Grads::from_tensors(vars.iter().map(|_| None).collect()),
        ));
    }
    Ok((value, Grads::from_store(&loss.backward()?, vars)))
}
