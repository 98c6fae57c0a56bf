//! The diffusion loss on the tiny preset UNet: a few trainable tensors (everything else frozen,
//! plain tensors) trained for 30 updates on a fixed batch lower the loss, for ε- and
//! v-prediction. Also checks the loss value against a hand-written MSE.
//! Run: cargo test --release -p anodiff --test train_diffusion -- --nocapture

mod common;

use anodiff::nn::Params;
use anodiff::sd::attention::ForwardCtx;
use anodiff::sd::noise::{NoiseSource, SeededNoise};
use anodiff::sd::presets::Preset;
use anodiff::sd::scheduler::{NoiseSchedule, PredictionType};
use anodiff::sd::unet::UNet2DConditionModel;
use anodiff::train::{
    checkpoint, peak_rss_bytes, AdamWConfig, DiffusionLoss, LrSchedule, TrainConfig, Trainer,
};
use candle_core::{Device, Tensor};
use common::temp_dir;

fn trainable(name: &str) -> bool {
    name.starts_with("conv_out.") || name.ends_with("attn2.to_v.weight")
}

fn run(prediction: PredictionType) -> (f64, f64) {
    let dev = Device::Cpu;
    let preset = Preset::by_name("tiny").unwrap();
    let params = Params::fresh(3, &dev).with_trainable(trainable);
    let unet = UNet2DConditionModel::new(&preset.unet, &params).unwrap();
    let vars = params.vars();
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    println!("{prediction:?}: trainable {names:?}");
    assert_eq!(vars.len(), 6, "conv_out.{{weight,bias}} + 4 attn2.to_v");

    let mut noise = SeededNoise::new(9);
    let x0 = noise.draw(&[2, 4, 8, 8], &dev).unwrap();
    let text = noise.draw(&[2, 6, 64], &dev).unwrap();
    let eps = noise.draw(&[2, 4, 8, 8], &dev).unwrap();
    let t = vec![100usize, 700];
    let dl = DiffusionLoss::new(&preset.scheduler)
        .unwrap()
        .with_prediction(prediction);
    let ctx = ForwardCtx::default();

    // Frozen parameters are plain tensors, so they are no optimiser variables. candle 0.11's
    // backward still computes gradients for the frozen operands of ops downstream of a trainable
    // variable (it never removes leaf grads); `Grads::from_store` keeps only the variables' and
    // the store is dropped right after, so that cost is transient (reported, not hidden).
    let store = dl
        .loss(&unet, &x0, &text, &eps, &t, &ctx)
        .unwrap()
        .backward()
        .unwrap();
    let grads = anodiff::train::Grads::from_store(&store, &vars);
    assert!((0..grads.len()).all(|i| grads.get(i).is_some()));
    let store_floats: usize = store
        .get_ids()
        .filter_map(|id| store.get_id(*id))
        .map(|t| t.elem_count())
        .sum();
    let var_floats: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    println!(
        "backward: GradStore holds {} tensors / {store_floats} floats; the {} trainable variables \
         {var_floats} floats",
        store.get_ids().count(),
        vars.len()
    );
    drop(store);

    let cfg = TrainConfig {
        steps: 30,
        batch_size: 2,
        seed: 1,
        optimizer: AdamWConfig {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
        max_grad_norm: Some(1.0),
        checkpoint_every: 0,
        ..Default::default()
    };
    let mut tr = Trainer::new(cfg, vars, 2).unwrap();
    let stats = tr
        .run(|_| dl.loss(&unet, &x0, &text, &eps, &t, &ctx))
        .unwrap();
    let (first, last) = (stats[0].loss, stats.last().unwrap().loss);
    let s = stats.last().unwrap();
    println!(
        "{prediction:?}: loss {first:.4} -> {last:.4} over 30 updates, {:.1} it/s, peak RSS {:.0} MB",
        s.its_per_sec,
        s.peak_rss_bytes.unwrap_or(0) as f64 / 1048576.0
    );
    (first, last)
}

#[test]
fn loss_decreases_on_tiny_unet_epsilon() {
    let (a, b) = run(PredictionType::Epsilon);
    assert!(b < 0.8 * a, "{a} -> {b}");
}

#[test]
fn loss_decreases_on_tiny_unet_v_prediction() {
    let (a, b) = run(PredictionType::VPrediction);
    assert!(b < 0.8 * a, "{a} -> {b}");
}

#[test]
fn diffusion_loss_is_the_mse_against_the_target() {
    let dev = Device::Cpu;
    let preset = Preset::by_name("tiny").unwrap();
    let unet = UNet2DConditionModel::new(&preset.unet, &Params::fresh(4, &dev)).unwrap();
    let mut noise = SeededNoise::new(2);
    let x0 = noise.draw(&[1, 4, 8, 8], &dev).unwrap();
    let text = noise.draw(&[1, 5, 64], &dev).unwrap();
    let ctx = ForwardCtx::default();
    let dl = DiffusionLoss::new(&preset.scheduler).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let (eps, t) = dl.draw(&x0, &mut rng).unwrap();
    assert_eq!(eps.dims(), x0.dims());
    assert!(t[0] < 1000);
    let sched = NoiseSchedule::new(&preset.scheduler).unwrap();
    let noisy = sched.add_noise(&x0, &eps, &t).unwrap();
    let tt = Tensor::new(&[t[0] as f32], &dev).unwrap();
    let pred = unet.forward(&noisy, &tt, &text, &ctx).unwrap();
    for p in [PredictionType::Epsilon, PredictionType::VPrediction] {
        let target = sched.training_target(p, &x0, &eps, &t).unwrap();
        let want = (&pred - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let got = DiffusionLoss::new(&preset.scheduler)
            .unwrap()
            .with_prediction(p)
            .loss(&unet, &x0, &text, &eps, &t, &ctx)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!("{p:?}: loss {got} vs hand-written {want}");
        assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0));
    }
    let e = dl
        .loss(&unet, &x0, &text, &eps, &[1, 2], &ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 timesteps for a batch of 1"), "{e}");
    assert!(peak_rss_bytes().unwrap_or(1) > 0);
}

/// Exact resume on the tiny UNet with fresh noise and timesteps every micro-batch: 4 updates in
/// one go equal 2 updates + resume to 4, bit for bit.
#[test]
fn tiny_unet_resume_is_bit_exact() {
    let dev = Device::Cpu;
    let preset = Preset::by_name("tiny").unwrap();
    let dl = DiffusionLoss::new(&preset.scheduler).unwrap();
    let mut noise = SeededNoise::new(21);
    let latents = noise.draw(&[3, 4, 8, 8], &dev).unwrap();
    let text = noise.draw(&[3, 6, 64], &dev).unwrap();
    let ctx = ForwardCtx::default();
    let cfg = |steps: usize, out: &std::path::Path| TrainConfig {
        steps,
        batch_size: 1,
        grad_accum: 2,
        seed: 8,
        optimizer: AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
        lr_schedule: LrSchedule::LinearWarmup { warmup: 1 },
        max_grad_norm: Some(1.0),
        checkpoint_every: 2,
        keep_checkpoints: 1,
        out_dir: Some(out.to_path_buf()),
    };
    let train = |steps: usize, out: &std::path::Path, resume: bool| -> Vec<Vec<f32>> {
        let params = Params::fresh(3, &dev).with_trainable(trainable);
        let unet = UNet2DConditionModel::new(&preset.unet, &params).unwrap();
        let vars = params.vars();
        let mut tr = Trainer::new(cfg(steps, out), vars.clone(), 3).unwrap();
        if resume {
            tr.resume(out).unwrap();
        }
        tr.run(|b| {
            let idx = Tensor::new(
                b.indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                &dev,
            )?;
            let x0 = latents.index_select(&idx, 0)?;
            let (eps, t) = dl.draw(&x0, &mut b.rng())?;
            dl.loss(&unet, &x0, &text.index_select(&idx, 0)?, &eps, &t, &ctx)
        })
        .unwrap();
        vars.iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    };
    let base = temp_dir("resume");
    let full = train(4, &base.join("full"), false);
    train(2, &base.join("split"), false);
    let resumed = train(4, &base.join("split"), true);
    let differing = full
        .iter()
        .zip(&resumed)
        .flat_map(|(a, b)| a.iter().zip(b))
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let total: usize = full.iter().map(|v| v.len()).sum();
    println!("tiny UNet resume: {differing} of {total} trainable weights differ in bits");
    assert_eq!(differing, 0);
    let ck = checkpoint::load(&base.join("split"), &dev).unwrap();
    assert_eq!(ck.state.step, 4);
    let _ = std::fs::remove_dir_all(&base);
}
