//! Optimiser building blocks: AdamW against torch numbers, gradient clipping, learning-rate
//! schedules, gradient accumulation.
//! Run: cargo test --release -p anodiff --test train_optim -- --nocapture

// The reference values are torch's f32 results printed as f64, pasted verbatim.
#![allow(clippy::excessive_precision)]

use anodiff::train::{AdamW, AdamWConfig, Grads, LrSchedule, TrainConfig, Trainer};
use candle_core::{Device, Tensor, Var};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// torch.optim.AdamW(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1), 3 steps;
/// printed by tools/train/adamw_reference.py (torch 2.15).
const GRADS: [[f32; 4]; 3] = [
    [0.1, -0.2, 0.3, 0.0],
    [-0.05, 0.4, 0.0, 1e-3],
    [0.7, 0.1, -0.3, -2.0],
];
const TORCH_PARAM: [[f32; 4]; 3] = [
    [
        0.4895000159740448,
        -0.9890000224113464,
        1.9880000352859497,
        0.0,
    ],
    [
        0.48634353280067444,
        -0.9916671514511108,
        1.979296326637268,
        -0.007424492854624987,
    ],
    [
        0.4792529344558716,
        -0.9948347806930542,
        1.9781757593154907,
        -0.0010605300776660442,
    ],
];
const TORCH_M3: [f32; 4] = [
    0.07360000163316727,
    0.02980000153183937,
    -0.005700001958757639,
    -0.1999099999666214,
];
const TORCH_V3: [f32; 4] = [
    0.005022759549319744,
    0.00207604025490582,
    0.0017820901703089476,
    0.040000010281801224,
];

#[test]
fn adamw_matches_torch() {
    let dev = Device::Cpu;
    let p = Var::new(&[0.5f32, -1.0, 2.0, 0.0], &dev).unwrap();
    let cfg = AdamWConfig {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::new(vec![("p".into(), p.clone())], cfg).unwrap();
    let tol = 1e-7;
    for (i, g) in GRADS.iter().enumerate() {
        let g = Grads::from_tensors(vec![Some(Tensor::new(g, &dev).unwrap())]);
        opt.step(&g, 0.01).unwrap();
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        let err = max_diff(&got, &TORCH_PARAM[i]);
        println!(
            "AdamW step {}: max |param - torch| = {err:.3e} (tol {tol:.0e})",
            i + 1
        );
        assert!(err < tol, "step {}: {got:?} vs {:?}", i + 1, TORCH_PARAM[i]);
    }
    let st = opt.state_tensors().unwrap();
    let m = st[0].1.to_vec1::<f32>().unwrap();
    let v = st[1].1.to_vec1::<f32>().unwrap();
    let (em, ev) = (max_diff(&m, &TORCH_M3), max_diff(&v, &TORCH_V3));
    println!("AdamW state after 3 steps: max err m {em:.3e}, v {ev:.3e}");
    assert!(em < 1e-7 && ev < 1e-8);
    assert_eq!(st[0].0, "exp_avg.p");
    assert_eq!(opt.state_steps(), vec![("p".to_string(), 3)]);
}

#[test]
fn adamw_skips_vars_without_gradient_and_rejects_duplicates() {
    let dev = Device::Cpu;
    let a = Var::new(&[1.0f32, 2.0], &dev).unwrap();
    let b = Var::new(&[3.0f32], &dev).unwrap();
    let mut opt = AdamW::new(
        vec![("a".into(), a.clone()), ("b".into(), b.clone())],
        AdamWConfig::default(),
    )
    .unwrap();
    let g = Grads::from_tensors(vec![None, Some(Tensor::new(&[1.0f32], &dev).unwrap())]);
    opt.step(&g, 0.1).unwrap();
    assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    assert_ne!(b.as_tensor().to_vec1::<f32>().unwrap(), vec![3.0]);
    assert_eq!(
        opt.state_steps(),
        vec![("a".to_string(), 0), ("b".to_string(), 1)]
    );
    let e = AdamW::new(
        vec![("x".into(), a.clone()), ("x".into(), b)],
        AdamWConfig::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("`x` is listed twice"), "{e}");
}

#[test]
fn global_norm_clipping() {
    let dev = Device::Cpu;
    let t = |v: &[f32]| Some(Tensor::new(v, &dev).unwrap());
    // Norm of (3, 4) and (0, 12) together: 13.
    let mut g = Grads::from_tensors(vec![t(&[3.0, 4.0]), None, t(&[0.0, 12.0])]);
    let norm = g.clip_global_norm(1.0).unwrap();
    assert!((norm - 13.0).abs() < 1e-12, "{norm}");
    let after = g.global_norm().unwrap();
    println!("clip: pre-clip norm {norm}, post-clip norm {after}");
    assert!((after - 13.0 / (13.0 + 1e-6)).abs() < 1e-6, "{after}");
    let x = g.get(0).unwrap().to_vec1::<f32>().unwrap();
    assert!((x[0] - 3.0 / 13.0).abs() < 1e-6);
    // Below the limit: untouched.
    let mut g = Grads::from_tensors(vec![t(&[3.0, 4.0])]);
    assert_eq!(g.clip_global_norm(10.0).unwrap(), 5.0);
    assert_eq!(g.get(0).unwrap().to_vec1::<f32>().unwrap(), vec![3.0, 4.0]);
    // Non-finite gradients are found by index.
    let g = Grads::from_tensors(vec![t(&[1.0]), t(&[f32::NAN]), t(&[f32::INFINITY])]);
    assert_eq!(g.first_non_finite().unwrap(), Some(1));
}

#[test]
fn lr_schedules() {
    let eq = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(eq(LrSchedule::Constant.lr(0.1, 0), 0.1));
    let w = LrSchedule::LinearWarmup { warmup: 4 };
    let f: Vec<f64> = (0..6).map(|s| w.factor(s)).collect();
    assert_eq!(f, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
    let c = LrSchedule::Cosine {
        warmup: 2,
        total: 10,
    };
    // diffusers get_cosine_schedule_with_warmup(opt, 2, 10) factors for steps 0..=10.
    let want = [
        0.0,
        0.5,
        1.0,
        0.9619397662556434,
        0.8535533905932737,
        0.6913417161825449,
        0.5,
        0.30865828381745514,
        0.14644660940672627,
        0.03806023374435663,
        0.0,
    ];
    for (s, w) in want.iter().enumerate() {
        assert!(eq(c.factor(s), *w), "step {s}: {} vs {w}", c.factor(s));
    }
    assert_eq!(c.factor(15), 0.0);
    // Serialised form used in checkpoint configs.
    let j = serde_json::to_string(&c).unwrap();
    assert_eq!(j, r#"{"kind":"cosine","warmup":2,"total":10}"#);
}

/// A 2-layer MLP's parameters, deterministic values.
fn mlp(dev: &Device) -> Vec<(String, Var)> {
    let val =
        |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32 * k).sin()) * 0.5).collect() };
    vec![
        (
            "w1".into(),
            Var::from_vec(val(12, 1.3), (3, 4), dev).unwrap(),
        ),
        ("b1".into(), Var::from_vec(val(4, 0.7), 4, dev).unwrap()),
        (
            "w2".into(),
            Var::from_vec(val(4, 2.1), (4, 1), dev).unwrap(),
        ),
    ]
}

fn mlp_loss(vars: &[(String, Var)], x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let h = x
        .matmul(vars[0].1.as_tensor())?
        .broadcast_add(vars[1].1.as_tensor())?
        .tanh()?;
    (h.matmul(vars[2].1.as_tensor())? - y)?.sqr()?.mean_all()
}

fn dataset(dev: &Device) -> (Tensor, Tensor) {
    let x: Vec<f32> = (0..18).map(|i| (i as f32 * 0.37).cos()).collect();
    let y: Vec<f32> = (0..6).map(|i| (i as f32 * 0.9).sin()).collect();
    (
        Tensor::from_vec(x, (6, 3), dev).unwrap(),
        Tensor::from_vec(y, (6, 1), dev).unwrap(),
    )
}

fn train_mlp(batch_size: usize, grad_accum: usize) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let vars = mlp(&dev);
    let (x, y) = dataset(&dev);
    let cfg = TrainConfig {
        steps: 4,
        batch_size,
        grad_accum,
        seed: 11,
        optimizer: AdamWConfig {
            lr: 0.05,
            ..Default::default()
        },
        max_grad_norm: Some(0.5),
        checkpoint_every: 0,
        ..Default::default()
    };
    let mut tr = Trainer::new(cfg, vars.clone(), 6).unwrap();
    tr.run(|b| {
        let idx = Tensor::new(
            b.indices.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            &dev,
        )?;
        Ok(mlp_loss(
            &vars,
            &x.index_select(&idx, 0)?,
            &y.index_select(&idx, 0)?,
        )?)
    })
    .unwrap();
    vars.iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn accumulating_two_micro_batches_equals_one_batch_of_two() {
    let a = train_mlp(1, 2);
    let b = train_mlp(2, 1);
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| max_diff(x, y))
        .fold(0.0, f32::max);
    println!("accumulation 2x1 vs 1x2 after 4 updates: max weight diff {err:.3e} (tol 1e-5)");
    assert!(err < 1e-5);
    // And training actually moved the weights.
    let init: Vec<f32> = mlp(&Device::Cpu)[0]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(max_diff(&init, &a[0]) > 1e-3);
}
