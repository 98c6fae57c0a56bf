//! The AVX2+FMA and plain paths of our kernels give the same results within 1e-5 relative
//! (forward and gradients). Its own test binary: `force_scalar` switches the paths process-wide.

mod common;

use anodiff::kernels::{attention, conv2d, force_scalar, groupnorm, winograd};
use candle_core::{DType, Device, Tensor, Var};
use common::rel;

/// Output and input gradients of each kernel on fixed inputs.
fn run_all() -> Vec<(String, Tensor)> {
    let dev = Device::Cpu;
    let seeded = |shape: &[usize], k: usize| -> Tensor {
        // Deterministic inputs without touching the global RNG between the two runs.
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i * 7919 + k * 104_729) % 1013) as f32 / 506.5 - 1.0) * 1.7)
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let mut out = Vec::new();
    let x = Var::from_tensor(&seeded(&[2, 16, 34, 30], 1)).unwrap();
    let w = Var::from_tensor(&(seeded(&[12, 16, 3, 3], 2) * 0.1).unwrap()).unwrap();
    for (name, tile) in [("f2", winograd::Tile::F2), ("f4", winograd::Tile::F4)] {
        let y = conv2d::conv2d_with(&x, &w, None, 1, 1, 1 << 20, Some(tile)).unwrap();
        let g = (&y * &seeded(y.dims(), 3))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        out.push((format!("conv {name} y"), y.detach()));
        out.push((format!("conv {name} dx"), g.get(&x).unwrap().clone()));
        out.push((format!("conv {name} dw"), g.get(&w).unwrap().clone()));
    }
    let (gm, bt) = (
        Var::from_tensor(&seeded(&[16], 4)).unwrap(),
        Var::from_tensor(&seeded(&[16], 5)).unwrap(),
    );
    for act in [groupnorm::Act::Silu, groupnorm::Act::Relu] {
        let y = groupnorm::group_norm(&x, &gm, &bt, 4, 1e-5, act).unwrap();
        let g = (&y * &seeded(y.dims(), 6))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        out.push((format!("groupnorm {act:?} y"), y.detach()));
        for (n, v) in [
            ("dx", x.as_tensor()),
            ("dgamma", gm.as_tensor()),
            ("dbeta", bt.as_tensor()),
        ] {
            out.push((format!("groupnorm {act:?} {n}"), g.get(v).unwrap().clone()));
        }
    }
    // Key length 77 (cross-attention) leaves a ragged tail after the 8- and 16-lane loops.
    let q = Var::from_tensor(&seeded(&[2, 3, 70, 24], 7)).unwrap();
    let k = Var::from_tensor(&seeded(&[2, 3, 77, 24], 8)).unwrap();
    let v = Var::from_tensor(&seeded(&[2, 3, 77, 24], 9)).unwrap();
    let y = attention::attention(&q, &k, &v, 0.2).unwrap();
    let g = (&y * &seeded(y.dims(), 10))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    out.push(("attention y".into(), y.detach()));
    for (n, t) in [("dq", &q), ("dk", &k), ("dv", &v)] {
        out.push((format!("attention {n}"), g.get(t).unwrap().clone()));
    }
    assert!(out.iter().all(|(_, t)| t.dtype() == DType::F32));
    out
}

#[test]
fn simd_and_plain_paths_agree() {
    force_scalar(false);
    let fast = run_all();
    force_scalar(true);
    let plain = run_all();
    force_scalar(false);
    let mut worst = 0f32;
    for ((name, a), (_, b)) in fast.iter().zip(&plain) {
        let e = rel(a, b);
        println!("{name}: {e:.2e}");
        worst = worst.max(e);
    }
    assert!(
        worst <= 1e-5,
        "AVX2 and plain paths differ by {worst:.2e} (tolerance 1e-5)"
    );
}
