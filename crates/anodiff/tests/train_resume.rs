//! Checkpoints: exact resume (n steps == k steps + resume to n, bit for bit), NaN/Inf stop
//! naming the step with the last checkpoint intact, checkpoint layout and JSON-lines log.
//! Run: cargo test --release -p anodiff --test train_resume -- --nocapture

mod common;

use anodiff::train::{checkpoint, AdamWConfig, LrSchedule, TrainConfig, Trainer};
use candle_core::{Device, Tensor, Var};
use common::temp_dir;
use rand::Rng;
use std::path::Path;

fn mlp(dev: &Device, init: f32) -> Vec<(String, Var)> {
    let val = |n: usize, k: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * k).sin()) * 0.5 * init)
            .collect()
    };
    vec![
        (
            "l1.weight".into(),
            Var::from_vec(val(12, 1.3), (3, 4), dev).unwrap(),
        ),
        (
            "l1.bias".into(),
            Var::from_vec(val(4, 0.7), 4, dev).unwrap(),
        ),
        (
            "l2.weight".into(),
            Var::from_vec(val(4, 2.1), (4, 1), dev).unwrap(),
        ),
    ]
}

fn weights(vars: &[(String, Var)]) -> Vec<Vec<f32>> {
    vars.iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

fn cfg(steps: usize, out: &Path) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 2,
        grad_accum: 2,
        seed: 5,
        optimizer: AdamWConfig {
            lr: 0.03,
            weight_decay: 0.01,
            ..Default::default()
        },
        lr_schedule: LrSchedule::Cosine {
            warmup: 2,
            total: 9,
        },
        max_grad_norm: Some(0.3),
        checkpoint_every: 2,
        keep_checkpoints: 2,
        out_dir: Some(out.to_path_buf()),
    }
}

/// 7 examples (so batches of 2 cross epoch ends); per-micro-batch input noise from the batch's
/// seeded stream, so resume must also restore the random streams.
fn loss_fn(
    vars: Vec<(String, Var)>,
    nan_at: Option<usize>,
) -> impl FnMut(&anodiff::train::Batch) -> anodiff::Result<Tensor> {
    let dev = Device::Cpu;
    let x: Vec<f32> = (0..21).map(|i| (i as f32 * 0.37).cos()).collect();
    let y: Vec<f32> = (0..7).map(|i| (i as f32 * 0.9).sin()).collect();
    let x = Tensor::from_vec(x, (7, 3), &dev).unwrap();
    let y = Tensor::from_vec(y, (7, 1), &dev).unwrap();
    move |b| {
        let idx: Vec<u32> = b.indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::new(idx, &dev)?;
        let mut rng = b.rng();
        let jitter: Vec<f32> = (0..b.indices.len() * 3)
            .map(|_| rng.random_range(-0.1f32..0.1))
            .collect();
        let xb =
            (x.index_select(&idx, 0)? + Tensor::from_vec(jitter, (b.indices.len(), 3), &dev)?)?;
        let h = xb
            .matmul(vars[0].1.as_tensor())?
            .broadcast_add(vars[1].1.as_tensor())?
            .tanh()?;
        let loss = (h.matmul(vars[2].1.as_tensor())? - y.index_select(&idx, 0)?)?
            .sqr()?
            .mean_all()?;
        if Some(b.step) == nan_at {
            return Ok((loss * f64::NAN)?);
        }
        Ok(loss)
    }
}

#[test]
fn resume_is_bit_exact() {
    let dev = Device::Cpu;
    let n = 9;
    // Reference: n steps in one go.
    let dir_a = temp_dir("full");
    let vars_a = mlp(&dev, 1.0);
    let mut ta = Trainer::new(cfg(n, &dir_a), vars_a.clone(), 7).unwrap();
    let stats_a = ta.run(loss_fn(vars_a.clone(), None)).unwrap();
    let wa = weights(&vars_a);

    // k = 5 steps (checkpoints at 2, 4 and the final 5), then a new process-like start: fresh
    // trainer over differently initialised variables, resumed from the run directory.
    let dir_b = temp_dir("split");
    let vars_b = mlp(&dev, 1.0);
    let mut tb = Trainer::new(cfg(5, &dir_b), vars_b.clone(), 7).unwrap();
    tb.run(loss_fn(vars_b.clone(), None)).unwrap();
    let ck = dir_b.join("checkpoints");
    let mut names: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!("checkpoint dir after 5 steps: {names:?}");
    assert_eq!(names, vec!["LATEST", "step-00000004", "step-00000005"]);
    let latest = ck.join("step-00000005");
    for f in [
        "weights.safetensors",
        "optimizer.safetensors",
        "state.json",
        "config.json",
    ] {
        assert!(latest.join(f).is_file(), "{f}");
    }

    let vars_c = mlp(&dev, -0.3);
    let mut tc = Trainer::new(cfg(n, &dir_b), vars_c.clone(), 7).unwrap();
    tc.resume(&dir_b).unwrap();
    assert_eq!(tc.step(), 5);
    let stats_c = tc.run(loss_fn(vars_c.clone(), None)).unwrap();
    assert_eq!(stats_c.len(), n - 5);
    let wc = weights(&vars_c);
    let differing = wa
        .iter()
        .zip(&wc)
        .flat_map(|(a, c)| a.iter().zip(c))
        .filter(|(a, c)| a.to_bits() != c.to_bits())
        .count();
    println!(
        "resume: {differing} of {} weights differ in bits between 9 steps and 5 + resume to 9",
        wa.iter().map(|v| v.len()).sum::<usize>()
    );
    assert_eq!(differing, 0);
    // The same losses were seen after the resume point.
    for (a, c) in stats_a[5..].iter().zip(&stats_c) {
        assert_eq!(a.loss.to_bits(), c.loss.to_bits(), "step {}", a.step);
    }
    // The resumed run's final checkpoint equals the reference one.
    let ka = checkpoint::load(&dir_a, &dev).unwrap();
    let kc = checkpoint::load(&dir_b, &dev).unwrap();
    assert_eq!(ka.state.step, n);
    assert_eq!(kc.state.step, n);
    assert_eq!(ka.state.data_order, kc.state.data_order);
    for (name, t) in &ka.optimizer {
        let u = &kc.optimizer[name];
        let d = (t - u)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{name}");
    }
    // Log: one JSON line per update in each run (5 + 4 in the split run).
    let log = std::fs::read_to_string(dir_b.join("train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), n);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], i + 1);
        for k in ["loss", "lr", "grad_norm", "secs"] {
            assert!(l[k].is_number(), "{k} in {l}");
        }
    }
    println!("last log line: {}", log.lines().last().unwrap());

    // Resuming with another seed is refused (it could not reproduce the run).
    let mut bad = cfg(n, &temp_dir("bad"));
    bad.seed = 6;
    let mut td = Trainer::new(bad, mlp(&dev, 1.0), 7).unwrap();
    let e = td.resume(&dir_b).unwrap_err().to_string();
    assert!(e.contains("seed") && e.contains("config.json"), "{e}");
    for d in [dir_a, dir_b, temp_dir("bad")] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn nan_loss_stops_at_that_step_and_keeps_last_checkpoint() {
    let dev = Device::Cpu;
    let dir = temp_dir("nan");
    let vars = mlp(&dev, 1.0);
    let mut tr = Trainer::new(cfg(9, &dir), vars.clone(), 7).unwrap();
    let e = tr
        .run(loss_fn(vars.clone(), Some(5)))
        .unwrap_err()
        .to_string();
    println!("NaN stop: {e}");
    assert!(e.contains("step 5") && e.contains("loss is NaN"), "{e}");
    assert!(e.contains("step-00000004"), "{e}");
    assert_eq!(tr.step(), 4);
    // The last checkpoint loads and holds the weights the run stopped with (step 5 not applied).
    let ck = checkpoint::load(&dir, &dev).unwrap();
    assert_eq!(ck.state.step, 4);
    for (name, v) in &vars {
        let d = (&ck.weights[name] - v.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn non_finite_gradient_names_the_variable_and_step() {
    let dev = Device::Cpu;
    // d/da sqrt(|a|) is infinite at a = 0 while the loss stays finite.
    let a = Var::new(&[0.0f32, 1.0], &dev).unwrap();
    let cfg = TrainConfig {
        steps: 3,
        checkpoint_every: 0,
        ..Default::default()
    };
    let mut tr = Trainer::new(cfg, vec![("adapter.a".into(), a.clone())], 1).unwrap();
    let e = tr
        .run(|_| Ok(a.as_tensor().abs()?.sqrt()?.sum_all()?))
        .unwrap_err()
        .to_string();
    println!("Inf-gradient stop: {e}");
    assert!(
        e.contains("step 1") && e.contains("`adapter.a`") && e.contains("not finite"),
        "{e}"
    );
    assert!(e.contains("no checkpoint was written"), "{e}");
    assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), vec![0.0, 1.0]);
}

#[test]
fn resolve_accepts_run_dir_checkpoints_dir_and_step_dir() {
    let dev = Device::Cpu;
    let dir = temp_dir("resolve");
    let vars = mlp(&dev, 1.0);
    let mut c = cfg(2, &dir);
    c.keep_checkpoints = 1;
    Trainer::new(c, vars.clone(), 7)
        .unwrap()
        .run(loss_fn(vars, None))
        .unwrap();
    let step = dir.join("checkpoints/step-00000002");
    assert_eq!(checkpoint::resolve(&dir).unwrap(), step);
    assert_eq!(checkpoint::resolve(&dir.join("checkpoints")).unwrap(), step);
    assert_eq!(checkpoint::resolve(&step).unwrap(), step);
    let e = checkpoint::resolve(&dir.join("nope"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("not a checkpoint"), "{e}");
    // No leftover temporary directories.
    let hidden = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(hidden, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
