//! Parity of anodiff's schedulers with diffusers 0.42.1 (fixtures from
//! tools/parity/make_scheduler_fixtures.py). Every run loads the scheduler_config.json the diffusers
//! class wrote, walks the whole short schedule feeding the model outputs and variance noise diffusers
//! saw, and compares every step's output.
//!
//! Tolerance: timesteps must be identical; tensors must satisfy max|ours - ref| ≤ 1e-5 · max(1,
//! max|ref|), i.e. absolute 1e-5 for unit-scale tensors and relative to the reference's magnitude
//! for Euler's sigma-space samples (|x| up to ~50).

mod common;

use anodiff::sd::scheduler::{
    make_scheduler, EulerScheduler, NoiseSchedule, Scheduler, SchedulerConfig, SchedulerKind,
};
use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};
use common::{fixtures, max_abs, tensors};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

const TOL: f64 = 1e-5;

fn dir() -> PathBuf {
    fixtures("scheduler")
}

struct Fixture {
    t: HashMap<String, Tensor>,
    meta: Value,
}

impl Fixture {
    fn load() -> Result<Self> {
        let t = tensors(&dir().join("scheduler.safetensors"));
        let meta = serde_json::from_str(&std::fs::read_to_string(dir().join("scheduler.json"))?)?;
        Ok(Self { t, meta })
    }
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.t
            .get(name)
            .ok_or_else(|| anyhow!("fixture tensor `{name}` missing"))
    }
}

fn kind_of(name: &str) -> Result<SchedulerKind> {
    Ok(name.parse::<SchedulerKind>()?)
}

/// The config diffusers' class `kind` saved for config set `cname`.
fn config(cname: &str, kind: &str) -> Result<SchedulerConfig> {
    let p = dir().join("configs").join(format!("{cname}_{kind}.json"));
    let s = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
    serde_json::from_str(&s).with_context(|| p.display().to_string())
}

fn scheduler(cname: &str, kind: &str, eta: f64) -> Result<Box<dyn Scheduler>> {
    Ok(make_scheduler(kind_of(kind)?, &config(cname, kind)?, eta)?)
}

/// (max|a - b|, max|b|) over all elements.
fn diff(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    Ok((max_abs(&(a - b)?) as f64, max_abs(b) as f64))
}

/// Asserts the tolerance; returns the error scaled to the tolerance's unit (relative when |ref| > 1).
fn check(what: &str, ours: &Tensor, reference: &Tensor) -> Result<f64> {
    let (e, m) = diff(ours, reference)?;
    let rel = e / m.max(1.0);
    anyhow::ensure!(
        rel <= TOL,
        "{what}: max|diff| = {e:.3e} (max|ref| = {m:.3}) exceeds tolerance"
    );
    Ok(rel)
}

fn floats(v: &Value) -> Result<Vec<f64>> {
    v.as_array()
        .ok_or_else(|| anyhow!("not a list: {v}"))?
        .iter()
        .map(|x| x.as_f64().ok_or_else(|| anyhow!("not a number: {x}")))
        .collect()
}

/// Timesteps from the JSON. diffusers' are f32 values (integers, or Euler's fractions) written as
/// the shortest decimal of that f64; serde_json's default float parser can land one f64 ulp off, so
/// round through f32 to recover the exact value.
fn timesteps(v: &Value) -> Result<Vec<f64>> {
    Ok(floats(v)?.into_iter().map(|t| t as f32 as f64).collect())
}

#[test]
fn configs_deserialize_and_build() -> Result<()> {
    for entry in std::fs::read_dir(dir().join("configs"))? {
        let p = entry?.path();
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        let (cname, kind) = stem
            .split_once('_')
            .ok_or_else(|| anyhow!("bad name {stem}"))?;
        let cfg = config(cname, kind)?;
        let k = kind_of(kind)?;
        assert!(cfg.class_name.is_some(), "{stem}: _class_name not read");
        assert_eq!(
            cfg.class_kind(),
            Some(k),
            "{stem}: _class_name {:?}",
            cfg.class_name
        );
        make_scheduler(k, &cfg, 0.0).with_context(|| stem.clone())?;
    }
    Ok(())
}

#[test]
fn timesteps_match_diffusers() -> Result<()> {
    let fx = Fixture::load()?;
    let mut count = 0;
    let mut lists: Vec<(String, usize, Vec<f64>)> = Vec::new();
    for (key, v) in fx.meta["timesteps"].as_object().unwrap() {
        let (sk, n) = key.rsplit_once('.').unwrap();
        lists.push((sk.to_string(), n.parse()?, timesteps(v)?));
    }
    for (key, sweep) in fx.meta["sweep"].as_object().unwrap() {
        for (n, v) in sweep.as_object().unwrap() {
            lists.push((key.clone(), n.parse()?, timesteps(v)?));
        }
    }
    for (sk, n, expected) in lists {
        let (cname, kind) = sk.split_once('.').unwrap();
        let mut s = scheduler(cname, kind, 0.0)?;
        s.set_timesteps(n)?;
        assert_eq!(s.timesteps(), expected.as_slice(), "{sk} with {n} steps");
        count += 1;
    }
    println!("timesteps: {count} lists identical");
    Ok(())
}

#[test]
fn euler_sigmas_match() -> Result<()> {
    let fx = Fixture::load()?;
    for cname in ["sd15", "variant", "linspace"] {
        let mut s = EulerScheduler::new(&config(cname, "euler")?)?;
        s.set_timesteps(50)?;
        let ours = Tensor::new(s.sigmas(), &Device::Cpu)?;
        let e = check(
            &format!("{cname} euler sigmas"),
            &ours,
            fx.get(&format!("{cname}.euler.sigmas.50"))?,
        )?;
        println!("{cname} euler sigmas(50): max rel err {e:.3e}");
    }
    Ok(())
}

#[test]
fn training_tables_match() -> Result<()> {
    let fx = Fixture::load()?;
    let tab = |v: &[f32]| Tensor::new(v, &Device::Cpu);
    let sd = NoiseSchedule::new(&config("sd15", "ddpm")?)?;
    let e = check("sd15 betas", &tab(sd.betas())?, fx.get("sd15.betas")?)?;
    println!("sd15 betas: max err {e:.3e}");
    for cname in ["sd15", "variant"] {
        let s = NoiseSchedule::new(&config(cname, "ddpm")?)?;
        let e = check(
            cname,
            &tab(s.alphas_cumprod())?,
            fx.get(&format!("{cname}.alphas_cumprod"))?,
        )?;
        println!("{cname} alphas_cumprod: max err {e:.3e}");
    }
    let cos = NoiseSchedule::new(&serde_json::from_str(
        r#"{"_class_name":"DDPMScheduler","beta_schedule":"squaredcos_cap_v2"}"#,
    )?)?;
    // (cumprod of the betas: any beta off would show here)
    let e = check(
        "cos ᾱ",
        &tab(cos.alphas_cumprod())?,
        fx.get("cos.alphas_cumprod")?,
    )?;
    println!("squaredcos_cap_v2 alphas_cumprod: max err {e:.3e}");
    Ok(())
}

/// Training side: q(x_t|x_0) and the v target at chosen timesteps, and their closed forms.
#[test]
fn add_noise_and_velocity_match() -> Result<()> {
    let fx = Fixture::load()?;
    let (x0, noise) = (fx.get("x0")?, fx.get("noise")?);
    let t: Vec<usize> = floats(&fx.meta["add_noise_t"])?
        .iter()
        .map(|&v| v as usize)
        .collect();
    for cname in ["sd15", "variant"] {
        let s = scheduler(cname, "ddpm", 0.0)?;
        let an = s.add_noise(x0, noise, &t)?;
        let e = check("add_noise", &an, fx.get(&format!("{cname}.add_noise"))?)?;
        let v = s.velocity(x0, noise, &t)?;
        let ev = check("velocity", &v, fx.get(&format!("{cname}.velocity"))?)?;
        // The closed forms, row by row: sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε and sqrt(ᾱ)ε - sqrt(1-ᾱ)x0.
        let sched = s.noise_schedule()?;
        for (row, &ti) in t.iter().enumerate() {
            let a = sched.alpha_bar(ti)?;
            let (x, n) = (x0.get(row)?, noise.get(row)?);
            let q = (x.affine(a.sqrt(), 0.0)? + n.affine((1.0 - a).sqrt(), 0.0)?)?;
            check(
                "add_noise closed form",
                &q,
                &fx.get(&format!("{cname}.add_noise"))?.get(row)?,
            )?;
            let vv = (n.affine(a.sqrt(), 0.0)? - x.affine((1.0 - a).sqrt(), 0.0)?)?;
            check(
                "velocity closed form",
                &vv,
                &fx.get(&format!("{cname}.velocity"))?.get(row)?,
            )?;
        }
        // The training target follows prediction_type (sd15: epsilon, variant: v_prediction).
        let target = s.training_target(x0, noise, &t)?;
        let want = if cname == "sd15" {
            noise.clone()
        } else {
            v.clone()
        };
        check("training_target", &target, &want)?;
        // Euler's add_noise lives in sigma space, at timesteps of the prepared run.
        let mut eu = scheduler(cname, "euler", 0.0)?;
        eu.set_timesteps(10)?;
        let et = timesteps(&fx.meta[format!("{cname}.euler_add_noise_t")])?;
        let ea = eu.add_noise_at(x0, noise, &et)?;
        let ee = check(
            "euler add_noise",
            &ea,
            fx.get(&format!("{cname}.euler.add_noise"))?,
        )?;
        println!("{cname} add_noise {e:.3e}  velocity {ev:.3e}  euler add_noise (rel) {ee:.3e}");
    }
    Ok(())
}

#[test]
fn sampling_runs_match() -> Result<()> {
    let fx = Fixture::load()?;
    let runs = fx.meta["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 23);
    for run in runs {
        let name = run["name"].as_str().unwrap();
        let (cname, kind) = (
            run["config"].as_str().unwrap(),
            run["kind"].as_str().unwrap(),
        );
        let steps = run["steps"].as_u64().unwrap() as usize;
        let eta = run.get("eta").and_then(Value::as_f64).unwrap_or(0.0);
        let mut s = scheduler(cname, kind, eta)?;
        s.set_timesteps(steps)?;
        let ts = timesteps(&run["timesteps"])?;
        assert_eq!(s.timesteps(), ts.as_slice(), "{name}: timesteps");
        let sigma0 = run["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (s.init_noise_sigma() - sigma0).abs() <= 1e-6 * sigma0,
            "{name}: init_noise_sigma {} vs {sigma0}",
            s.init_noise_sigma()
        );
        let mut sample = match fx.t.get(&format!("{name}.start")) {
            Some(start) => {
                check(
                    &format!("{name} start"),
                    &fx.get("init")?.affine(s.init_noise_sigma(), 0.0)?,
                    start,
                )?;
                start.clone()
            }
            None => fx.get("init")?.clone(),
        };
        let (mut worst, mut noised) = (0f64, 0);
        for (i, &t) in ts.iter().enumerate() {
            let mo = fx.get(&format!("bank.model.{i}"))?;
            if let Some(want) = fx.t.get(&format!("{name}.scaled.{i}")) {
                let scaled = s.scale_model_input(&sample, t)?;
                worst = worst.max(check(&format!("{name} scaled {i}"), &scaled, want)?);
            }
            let noise = if s.needs_noise_at(t) {
                noised += 1;
                Some(fx.get(&format!("bank.noise.{i}"))?)
            } else {
                None
            };
            let prev = s.step(mo, t, &sample, noise)?;
            worst = worst.max(check(
                &format!("{name} step {i} (t={t})"),
                &prev,
                fx.get(&format!("{name}.prev.{i}"))?,
            )?);
            sample = prev;
        }
        println!(
            "{name:<24} {} steps, {noised} with noise: max err {worst:.3e}",
            ts.len()
        );
    }
    Ok(())
}
