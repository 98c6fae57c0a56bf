//! Micro-batches side by side: `Lanes` keeps item order and lane assignment, candle's `serial`
//! patch gives matmuls one thread, and `Trainer::train_step_par` (two lanes) equals
//! `Trainer::train_step` bit for bit on the `tiny-pixel` UNet (convolutions, GroupNorm,
//! attention: every kernel the small networks use) — while really using two threads.
//! Run: cargo test --release -p anodiff --test train_lanes

use anodiff::nn::Params;
use anodiff::runtime::Lanes;
use anodiff::sd::attention::ForwardCtx;
use anodiff::sd::presets::Preset;
use anodiff::sd::unet::UNet2DConditionModel;
use anodiff::train::{AdamWConfig, Batch, TrainConfig, Trainer};
use candle_core::{Device, Tensor, Var};
use std::collections::HashSet;
use std::sync::Mutex;

#[test]
fn lanes_keep_item_order_and_give_each_lane_its_own_thread() {
    let lanes = Lanes::new(2).unwrap();
    let out = lanes.map(7, |i| (i * 10, std::thread::current().id()));
    assert_eq!(
        out.iter().map(|o| o.0).collect::<Vec<_>>(),
        vec![0, 10, 20, 30, 40, 50, 60]
    );
    // Items i and i + 2 share a lane (thread); the two lanes differ.
    for i in 0..5 {
        assert_eq!(out[i].1, out[i + 2].1, "item {i}");
    }
    assert_ne!(out[0].1, out[1].1);
    // Fewer items than lanes, and none.
    assert_eq!(lanes.map(1, |i| i + 1), vec![1]);
    assert!(lanes.map(0, |i| i).is_empty());
    // One lane is the calling thread, and so is a single item.
    let me = std::thread::current().id();
    let one = Lanes::new(1).unwrap();
    assert_eq!(one.len(), 1);
    assert!(one
        .map(3, |_| std::thread::current().id())
        .iter()
        .all(|&t| t == me));
    assert_eq!(lanes.map(1, |_| std::thread::current().id()), vec![me]);
}

#[test]
fn serial_gives_candle_one_thread_and_restores_the_setting() {
    let before = candle_core::utils::get_num_threads();
    let inside = candle_core::utils::serial(|| {
        // Nested use keeps it serial.
        let nested = candle_core::utils::serial(candle_core::utils::get_num_threads);
        (candle_core::utils::get_num_threads(), nested)
    });
    assert_eq!(inside, (1, 1));
    assert_eq!(candle_core::utils::get_num_threads(), before);
}

fn weights(vars: &[(String, Var)]) -> Vec<Vec<f32>> {
    vars.iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

/// Trains a fresh `tiny-pixel` UNet for 3 updates of 2 micro-batches of 2, data drawn from each
/// micro-batch's seed; returns (losses, final weights, threads that ran the loss).
fn train(parallel: bool) -> (Vec<f64>, Vec<Vec<f32>>, usize) {
    // Inside a 2-thread pool, as the CLI runs commands on its workers (the trainer is not Send).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| train_on_pool(parallel))
}

fn train_on_pool(parallel: bool) -> (Vec<f64>, Vec<Vec<f32>>, usize) {
    let dev = Device::Cpu;
    let preset = Preset::by_name("tiny-pixel").unwrap();
    let p = Params::fresh(3, &dev);
    let unet = UNet2DConditionModel::new(&preset.unet, &p).unwrap();
    let vars = p.vars();
    let cfg = TrainConfig {
        steps: 3,
        batch_size: 2,
        grad_accum: 2,
        seed: 11,
        optimizer: AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
        checkpoint_every: 0,
        out_dir: None,
        ..Default::default()
    };
    let mut tr = Trainer::new(cfg, vars.clone(), 6).unwrap();
    let s = preset.resolution;
    let c = preset.unet.cross_attention_dim.get(0);
    let threads = Mutex::new(HashSet::new());
    let loss = |b: &Batch| -> anodiff::Result<Tensor> {
        threads.lock().unwrap().insert(std::thread::current().id());
        let n = b.indices.len();
        let seed = b.seed;
        // Data from the micro-batch's seed: a different pattern per micro-batch and update.
        let f = 0.3 + (seed % 97) as f64 * 0.01;
        let wave = |len: usize, f: f64| -> anodiff::Result<Tensor> {
            Ok(
                (Tensor::arange(0u32, len as u32, &dev)?.to_dtype(candle_core::DType::F32)? * f)?
                    .sin()?,
            )
        };
        let x = wave(n * 3 * s * s, f)?.reshape((n, 3, s, s))?;
        let ehs = wave(n * 77 * c, f * 1.7)?.reshape((n, 77, c))?;
        let t = Tensor::new(&[100f32 + (seed % 13) as f32 * 50.0, 700.0][..n], &dev)?;
        let out = unet.forward(&x, &t, &ehs, &ForwardCtx::default())?;
        Ok((out - &x)?.sqr()?.mean_all()?)
    };
    let mut losses = Vec::new();
    for _ in 0..3 {
        let st = if parallel {
            tr.train_step_par(&loss).unwrap()
        } else {
            tr.train_step(&mut |b: &Batch| loss(b)).unwrap()
        };
        losses.push(st.loss);
    }
    let n_threads = threads.lock().unwrap().len();
    (losses, weights(&vars), n_threads)
}

#[test]
fn parallel_micro_batches_equal_sequential_bit_for_bit() {
    let (l_seq, w_seq, _) = train(false);
    let (l_par, w_par, threads) = train(true);
    assert_eq!(threads, 2, "the two micro-batches ran on two threads");
    assert_eq!(l_seq, l_par, "losses");
    assert!(w_seq == w_par, "weights differ after 3 updates");
    // And training did something.
    let (_, w0, _) = {
        let p = Params::fresh(3, &Device::Cpu);
        let preset = Preset::by_name("tiny-pixel").unwrap();
        let _u = UNet2DConditionModel::new(&preset.unet, &p).unwrap();
        (0, weights(&p.vars()), 0)
    };
    assert!(w0 != w_seq, "3 updates left the weights unchanged");
}

#[test]
fn inference_runs_side_by_side_only_for_small_unets() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        for small in ["tiny-pixel", "small", "small64-attn32", "small-inpaint"] {
            let p = Preset::by_name(small).unwrap();
            assert_eq!(p.unet.side_by_side(), 2, "{small}");
        }
        // SD-size UNets keep one pass at a time (memory, and their ops fill the cores already).
        for big in ["sd15", "sd15-inpaint", "sd2-base"] {
            let p = Preset::by_name(big).unwrap();
            assert_eq!(p.unet.side_by_side(), 1, "{big}");
        }
    });
}

#[test]
fn bench_small_times_micro_batches_and_refuses_a_split_that_does_not_divide() {
    use anodiff::bench::small::{bench_small, SmallBenchOptions};
    let o = SmallBenchOptions {
        steps: 1,
        warmup: 0,
        only: vec!["locnet64_step".into()],
        micro_batches: 2,
    };
    let r = bench_small(&o, &mut |_| {}).unwrap();
    assert_eq!(r.micro_batches, 2);
    assert!(r.locnet64_step.is_some_and(|ms| ms > 0.0));
    assert!(r.small_unet_step.is_none());
    let e = bench_small(
        &SmallBenchOptions {
            micro_batches: 3,
            ..o
        },
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("micro-batches 3"), "{e}");
}
