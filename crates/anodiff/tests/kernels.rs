//! Our CPU kernels (conv2d, fused GroupNorm+SiLU) against candle's reference composition, forward
//! and gradients, plus a finite-difference check of the GroupNorm+SiLU backward in f64.

mod common;

use anodiff::kernels::groupnorm::Act;
use anodiff::kernels::{attention, conv2d, geglu, groupnorm, lowrank, winograd};
use anodiff::nn::ops::sdpa_basic;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use common::rel;

fn randn(shape: &[usize], dt: DType) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap()
}

const TOL: f32 = 1e-4;

/// Gradient stores of `Σ ours·r` and `Σ refr·r` for one random `r` of their shape: the same
/// scalar loss pulled back through both computations.
fn both_grads(ours: &Tensor, refr: &Tensor) -> (GradStore, GradStore) {
    let r = randn(refr.dims(), refr.dtype());
    let g = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (g(ours), g(refr))
}

/// Worst `|numeric − analytic| / (1 + |numeric|)` over every element of every input: `loss`
/// builds a scalar from the inputs; the analytic gradients come from one backward pass through
/// `Var` copies of them, the numeric ones from central differences with step 1e-6 (use f64).
fn fd_worst(inputs: &[&Tensor], loss: impl Fn(&[Tensor]) -> Tensor) -> f64 {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tracked: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = loss(&tracked).backward().unwrap();
    let mut worst = 0f64;
    for (k, var) in vars.iter().enumerate() {
        let analytic = grads.get(var).unwrap().flatten_all().unwrap();
        let analytic = analytic.to_vec1::<f64>().unwrap();
        let base = inputs[k].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..base.len() {
            let bump = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                let mut ts: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
                ts[k] = Tensor::from_vec(v, inputs[k].shape(), &Device::Cpu).unwrap();
                loss(&ts).to_scalar::<f64>().unwrap()
            };
            let num = (bump(1e-6) - bump(-1e-6)) / 2e-6;
            worst = worst.max((num - analytic[i]).abs() / (1.0 + num.abs()));
        }
    }
    worst
}

#[test]
fn conv2d_matches_candle_fwd_and_grads() {
    // (n, c, h, w, o, k, stride, pad): odd sizes, stride 2, 1×1 (both fast and strided path),
    // channel counts not multiples of 8, batch 1 and 2.
    let cases = [
        (2, 5, 9, 7, 6, 3, 1, 1),
        (1, 3, 8, 8, 4, 3, 2, 1),
        (2, 7, 6, 5, 3, 1, 1, 0),
        (1, 4, 7, 5, 3, 3, 2, 0),
        (2, 19, 11, 13, 10, 3, 1, 1),
        (1, 3, 5, 5, 5, 1, 2, 0),
        (1, 2, 3, 3, 3, 3, 1, 1),
    ];
    for dt in [DType::F32, DType::F64] {
        for &(n, c, h, w, o, k, s, p) in &cases {
            let x = Var::from_tensor(&randn(&[n, c, h, w], dt)).unwrap();
            let wt = Var::from_tensor(&randn(&[o, c, k, k], dt)).unwrap();
            // Alternate between whole-image im2col and a budget of ~2 output rows per tile.
            let ours = if h % 2 == 1 {
                conv2d::conv2d_tiled(&x, &wt, s, p, c * k * k * w).unwrap()
            } else {
                conv2d::conv2d(&x, &wt, s, p).unwrap()
            };
            let refr = x.conv2d(&wt, p, s, 1, 1).unwrap();
            let (g1, g2) = both_grads(&ours, &refr);
            let ef = rel(&ours, &refr);
            let ex = rel(g1.get(&x).unwrap(), g2.get(&x).unwrap());
            let ew = rel(g1.get(&wt).unwrap(), g2.get(&wt).unwrap());
            println!(
                "conv {dt:?} {:?}: fwd {ef:.2e} dx {ex:.2e} dw {ew:.2e}",
                (n, c, h, w, o, k, s, p)
            );
            assert!(
                ef < TOL && ex < TOL && ew < TOL,
                "conv2d mismatch beyond {TOL}"
            );
        }
    }
}

#[test]
fn conv2d_winograd_matches_candle() {
    // Stride-1 3×3 shapes with enough tiles for Winograd, each variant as the cap: forward, input
    // gradient and weight gradient against candle's conv and backward; padding 0, 1, 2. The first
    // shape has < 64 4×4 tiles, so its F(4,3) run steps down to F(2,3).
    let cases = [
        (2, 5, 16, 18, 6, 1),
        (1, 9, 34, 38, 7, 0),
        (2, 4, 31, 29, 3, 2),
    ];
    for (tile, tol) in [(winograd::Tile::F2, 2e-6), (winograd::Tile::F4, 1e-5)] {
        for &(n, c, h, w, o, p) in &cases {
            let x = Var::from_tensor(&randn(&[n, c, h, w], DType::F32)).unwrap();
            let wt = Var::from_tensor(&randn(&[o, c, 3, 3], DType::F32)).unwrap();
            let ours = conv2d::conv2d_with(&x, &wt, None, 1, p, 1 << 20, Some(tile)).unwrap();
            let refr = x.conv2d(&wt, p, 1, 1, 1).unwrap();
            let (g1, g2) = both_grads(&ours, &refr);
            let ef = rel(&ours, &refr);
            let ex = rel(g1.get(&x).unwrap(), g2.get(&x).unwrap());
            let ew = rel(g1.get(&wt).unwrap(), g2.get(&wt).unwrap());
            println!(
                "winograd {tile:?} {:?}: fwd {ef:.2e} dx {ex:.2e} dw {ew:.2e}",
                (n, c, h, w, o, p)
            );
            // F(2,3) stays near im2col's rounding; F(4,3) within 1e-5 relative.
            assert!(ef < tol && ex < tol && ew < tol, "{tile:?} beyond {tol}");
        }
    }
}

#[test]
fn conv2d_fused_bias_matches_candle() {
    // The bias added inside the op (im2col and Winograd paths, f32 and f64) against candle's conv
    // followed by a broadcast add: forward and the gradients of input, weight and bias.
    let cases = [
        (2, 5, 9, 7, 6, 3, 1, 1, false),
        (1, 4, 7, 5, 3, 1, 2, 0, false),
        (2, 5, 16, 18, 6, 3, 1, 1, true),
    ];
    for dt in [DType::F32, DType::F64] {
        for &(n, c, h, w, o, k, s, p, wino) in &cases {
            let x = Var::from_tensor(&randn(&[n, c, h, w], dt)).unwrap();
            let wt = Var::from_tensor(&randn(&[o, c, k, k], dt)).unwrap();
            let b = Var::from_tensor(&randn(&[o], dt)).unwrap();
            let ours = conv2d::conv2d_with(
                &x,
                &wt,
                Some(&b),
                s,
                p,
                1 << 20,
                wino.then_some(winograd::Tile::F2),
            )
            .unwrap();
            let refr = x
                .conv2d(&wt, p, s, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            let (g1, g2) = both_grads(&ours, &refr);
            let e = [
                rel(&ours, &refr),
                rel(g1.get(&x).unwrap(), g2.get(&x).unwrap()),
                rel(g1.get(&wt).unwrap(), g2.get(&wt).unwrap()),
                rel(g1.get(&b).unwrap(), g2.get(&b).unwrap()),
            ];
            println!(
                "conv+bias {dt:?} {:?}: fwd/dx/dw/db {e:?}",
                (n, c, h, w, o, k, s, p, wino)
            );
            assert!(
                e.iter().all(|&v| v < 2e-6),
                "fused bias conv beyond 2e-6: {e:?}"
            );
        }
    }
    // A frozen bias gets no gradient, and a bias of the wrong length is an error, not a panic.
    let x = Var::from_tensor(&randn(&[1, 2, 5, 5], DType::F32)).unwrap();
    let wt = randn(&[3, 2, 3, 3], DType::F32);
    let bias = randn(&[3], DType::F32);
    let y = conv2d::conv2d_bias(&x, &wt, Some(&bias), 1, 1).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_some() && g.get(&bias).is_none() && g.get(&wt).is_none());
    assert!(conv2d::conv2d_bias(&x, &wt, Some(&randn(&[4], DType::F32)), 1, 1).is_err());
}

/// Stride 2 where the last input column is never read: candle's own backward fails on this shape
/// (its transposed conv cannot recover the input width), so check against finite differences.
#[test]
fn conv2d_grads_finite_differences_f64() {
    let (s, p) = (2, 0);
    let x = randn(&[1, 2, 5, 6], DType::F64);
    let w = randn(&[3, 2, 3, 3], DType::F64);
    let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
    let y = conv2d::conv2d(&xv, &wv, s, p).unwrap();
    let r = randn(y.dims(), DType::F64);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let worst = fd_worst(&[&x, &w], |t| {
        let y = conv2d::conv2d(&t[0], &t[1], s, p).unwrap();
        (y * &r).unwrap().sum_all().unwrap()
    });
    // A plain (untracked) input still gives the weight gradient.
    let y2 = conv2d::conv2d(&x, &wv, s, p).unwrap();
    let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g2.get(&x).is_none());
    assert!(rel(g2.get(&wv).unwrap(), grads.get(&wv).unwrap()) < 1e-12);
    println!("conv2d f64 finite differences (5x6, stride 2): worst rel err {worst:.2e} (tol 1e-7)");
    assert!(worst < 1e-7);
}

#[test]
fn kernels_reject_bad_shapes() {
    let x = randn(&[1, 3, 4, 4], DType::F32);
    let w = randn(&[2, 5, 3, 3], DType::F32);
    assert!(conv2d::conv2d(&x, &w, 1, 1).is_err());
    let g = randn(&[6], DType::F32);
    assert!(groupnorm::group_norm(
        &randn(&[1, 6, 2, 2], DType::F32),
        &g,
        &g,
        4,
        1e-5,
        Act::Silu
    )
    .is_err());
    let q = randn(&[1, 2, 4, 8], DType::F32);
    let k = randn(&[1, 2, 5, 7], DType::F32);
    assert!(attention::attention(&q, &k, &k, 1.0).is_err());
}

#[test]
fn groupnorm_matches_candle_fwd_and_grads() {
    // (shape, groups)
    // The rank-2, one-group cases are LayerNorm over the last dim (how `nn::LayerNorm` calls it).
    let cases: [(&[usize], usize); 7] = [
        (&[2, 6, 5, 7], 3),
        (&[1, 10, 4, 4], 5),
        (&[2, 12, 3], 4),
        (&[2, 32, 8, 8], 32),
        (&[1, 64, 9, 9], 32),
        (&[6, 40], 1),
        (&[5, 23], 1),
    ];
    for dt in [DType::F32, DType::F64] {
        for (shape, groups) in cases {
            for act in [Act::Identity, Act::Silu, Act::Relu] {
                let c = shape[1];
                // Offset mean so the normalisation actually matters.
                let x = Var::from_tensor(&randn(shape, dt).affine(3.0, 1.5).unwrap()).unwrap();
                let g = Var::from_tensor(&randn(&[c], dt)).unwrap();
                let b = Var::from_tensor(&randn(&[c], dt)).unwrap();
                let ours = groupnorm::group_norm(&x, &g, &b, groups, 1e-5, act).unwrap();
                let refr = groupnorm::reference(&x, &g, &b, groups, 1e-5, act).unwrap();
                let (g1, g2) = both_grads(&ours, &refr);
                let errs = [
                    rel(&ours, &refr),
                    rel(g1.get(&x).unwrap(), g2.get(&x).unwrap()),
                    rel(g1.get(&g).unwrap(), g2.get(&g).unwrap()),
                    rel(g1.get(&b).unwrap(), g2.get(&b).unwrap()),
                ];
                println!(
                    "groupnorm {dt:?} {shape:?}/{groups} {act:?}: fwd,dx,dgamma,dbeta {errs:?}"
                );
                assert!(
                    errs.iter().all(|&e| e < TOL),
                    "groupnorm mismatch beyond {TOL}"
                );
            }
        }
    }
}

/// Worst central-difference error of the fused GroupNorm + `act` in f64, and the smallest |z| of
/// its affine output (how far the data stay from ReLU's kink). The inputs are fixed (not drawn from
/// candle's unseeded RNG), so the kink check cannot fail by chance.
fn groupnorm_fd(act: Act) -> (f64, f64) {
    let (shape, groups, eps) = ([2usize, 4, 3, 3], 2, 1e-5);
    let fixed = |dims: &[usize], k: usize| {
        let n: usize = dims.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| (((i * 7919 + k * 104_729) % 1013) as f64 / 506.5 - 1.0) * 1.7)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    };
    let x = fixed(&shape, 1);
    let g = fixed(&[4], 2);
    let b = fixed(&[4], 3);
    let r = fixed(&shape, 4);
    let z = groupnorm::group_norm(&x, &g, &b, groups, eps, Act::Identity).unwrap();
    let min_abs = z.abs().unwrap().flatten_all().unwrap().min(0).unwrap();
    let worst = fd_worst(&[&x, &g, &b], |t| {
        let y = groupnorm::group_norm(&t[0], &t[1], &t[2], groups, eps, act).unwrap();
        (y * &r).unwrap().sum_all().unwrap()
    });
    (worst, min_abs.to_scalar::<f64>().unwrap())
}

#[test]
fn groupnorm_silu_backward_finite_differences_f64() {
    let (worst, _) = groupnorm_fd(Act::Silu);
    println!("groupnorm+silu f64 finite differences: worst rel err {worst:.2e} (tol 1e-6)");
    assert!(worst < 1e-6);
}

#[test]
fn groupnorm_relu_backward_finite_differences_f64() {
    // A central difference across ReLU's kink (z = 0) would be meaningless: the test asserts that
    // the data keep every |z| far above the step.
    let (worst, min_abs) = groupnorm_fd(Act::Relu);
    println!("groupnorm+relu f64 finite differences: worst rel err {worst:.2e} (tol 1e-6), min |z| {min_abs:.1e}");
    assert!(
        min_abs > 1e-3,
        "data too close to the kink for a finite difference"
    );
    assert!(worst < 1e-6);
}

#[test]
fn attention_matches_candle_fwd_and_grads() {
    // (batch, heads, T, S, d, dv): self-attention, cross-attention with 77 keys, T not a
    // multiple of the 128-row block, single head (VAE).
    let cases = [
        (1, 2, 10, 10, 8, 8),
        (2, 3, 130, 77, 5, 7),
        (1, 1, 300, 300, 16, 16),
        (2, 4, 129, 129, 40, 40),
    ];
    for dt in [DType::F32, DType::F64] {
        for &(b, h, t, s, d, dv) in &cases {
            let q = Var::from_tensor(&randn(&[b, h, t, d], dt)).unwrap();
            let k = Var::from_tensor(&randn(&[b, h, s, d], dt)).unwrap();
            let v = Var::from_tensor(&randn(&[b, h, s, dv], dt)).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let ours = attention::attention(&q, &k, &v, scale).unwrap();
            let refr = sdpa_basic(&q, &k, &v, scale).unwrap();
            let (g1, g2) = both_grads(&ours, &refr);
            let errs = [
                rel(&ours, &refr),
                rel(g1.get(&q).unwrap(), g2.get(&q).unwrap()),
                rel(g1.get(&k).unwrap(), g2.get(&k).unwrap()),
                rel(g1.get(&v).unwrap(), g2.get(&v).unwrap()),
            ];
            println!(
                "attention {dt:?} {:?}: fwd,dq,dk,dv {errs:?}",
                (b, h, t, s, d, dv)
            );
            assert!(
                errs.iter().all(|&e| e < TOL),
                "attention mismatch beyond {TOL}"
            );
        }
    }
}

/// `x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ` composed from candle ops: the reference for the fused op.
fn lowrank_ref(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    a: &Tensor,
    bm: &Tensor,
    s: f64,
) -> Tensor {
    let y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
    let y = match b {
        Some(b) => y.broadcast_add(b).unwrap(),
        None => y,
    };
    let d = x
        .broadcast_matmul(&a.t().unwrap())
        .unwrap()
        .broadcast_matmul(&bm.t().unwrap())
        .unwrap();
    (y + (d * s).unwrap()).unwrap()
}

#[test]
fn lowrank_linear_matches_composition() {
    // (batch, tokens, in, out, rank, bias): 3-D input, sizes not multiples of 8, rank 1.
    let cases = [
        (2, 5, 7, 6, 3, true),
        (1, 9, 4, 11, 1, false),
        (3, 1, 16, 8, 4, true),
    ];
    for dt in [DType::F32, DType::F64] {
        let tol = if dt == DType::F64 { 1e-12 } else { 2e-6 };
        for &(bs, t, inp, out, r, bias) in &cases {
            let x = Var::from_tensor(&randn(&[bs, t, inp], dt)).unwrap();
            let w = randn(&[out, inp], dt);
            let b = bias.then(|| randn(&[out], dt));
            let a = Var::from_tensor(&randn(&[r, inp], dt)).unwrap();
            let bm = Var::from_tensor(&randn(&[out, r], dt)).unwrap();
            let ours = lowrank::linear_lowrank(&x, &w, b.as_ref(), &a, &bm, 0.7)
                .unwrap()
                .expect("fused op applies to a frozen f32/f64 CPU layer");
            let refr = lowrank_ref(&x, &w, b.as_ref(), &a, &bm, 0.7);
            let (g1, g2) = both_grads(&ours, &refr);
            let e = [
                rel(&ours, &refr),
                rel(g1.get(&x).unwrap(), g2.get(&x).unwrap()),
                rel(g1.get(&a).unwrap(), g2.get(&a).unwrap()),
                rel(g1.get(&bm).unwrap(), g2.get(&bm).unwrap()),
            ];
            println!(
                "lowrank {dt:?} {:?}: fwd/dx/dA/dB {e:?}",
                (bs, t, inp, out, r, bias)
            );
            assert!(
                e.iter().all(|&v| v < tol),
                "fused LoRA linear beyond {tol}: {e:?}"
            );
            // The frozen base weight gets no gradient.
            assert!(g1.get(&w).is_none());
        }
    }
    // The frozen layer alone (rank-0 pair): forward and dx against x·Wᵀ + b, no weight gradient.
    for dt in [DType::F32, DType::F64] {
        let x = Var::from_tensor(&randn(&[2, 7, 9], dt)).unwrap();
        let (w, b) = (randn(&[5, 9], dt), randn(&[5], dt));
        for bias in [Some(&b), None] {
            let ours = lowrank::linear_frozen(&x, &w, bias).unwrap().unwrap();
            let refr = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            let refr = bias.map_or(refr.clone(), |b| refr.broadcast_add(b).unwrap());
            let (g1, g2) = both_grads(&ours, &refr);
            let e = [
                rel(&ours, &refr),
                rel(g1.get(&x).unwrap(), g2.get(&x).unwrap()),
            ];
            println!("frozen linear {dt:?} bias {}: fwd/dx {e:?}", bias.is_some());
            assert!(e.iter().all(|&v| v < 2e-6) && g1.get(&w).is_none());
        }
    }
    // A trainable base weight or a mismatched low-rank pair is left to the composition.
    let x = randn(&[2, 4], DType::F32);
    let (a, bm) = (randn(&[2, 4], DType::F32), randn(&[3, 2], DType::F32));
    let wv = Var::from_tensor(&randn(&[3, 4], DType::F32)).unwrap();
    assert!(lowrank::linear_lowrank(&x, &wv, None, &a, &bm, 1.0)
        .unwrap()
        .is_none());
    let w = randn(&[5, 4], DType::F32);
    assert!(lowrank::linear_lowrank(&x, &w, None, &a, &bm, 1.0)
        .unwrap()
        .is_none());
}

#[test]
fn lowrank_linear_backward_finite_differences_f64() {
    let (x, w, b) = (
        randn(&[2, 3, 5], DType::F64),
        randn(&[4, 5], DType::F64),
        randn(&[4], DType::F64),
    );
    let (a, bm, r) = (
        randn(&[2, 5], DType::F64),
        randn(&[4, 2], DType::F64),
        randn(&[2, 3, 4], DType::F64),
    );
    let worst = fd_worst(&[&x, &a, &bm], |t| {
        let y = lowrank::linear_lowrank(&t[0], &w, Some(&b), &t[1], &t[2], 0.5).unwrap();
        (y.unwrap() * &r).unwrap().sum_all().unwrap()
    });
    println!("lowrank linear f64 finite differences: worst rel err {worst:.2e} (tol 1e-8)");
    assert!(worst < 1e-8);
}

#[test]
fn geglu_matches_composition_and_finite_differences() {
    // Against candle's narrow + exact GELU + product, f32 and f64, 3-D input with an odd half.
    // candle's GELU backward truncates 1/√(2π) to 0.398942 (~1.5e-7 relative), so dh is compared
    // at 1e-6 in both dtypes; the finite differences below check ours to 1e-8.
    for (dt, tol_fwd) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
        let h = Var::from_tensor(&(randn(&[2, 5, 14], dt) * 2.0).unwrap()).unwrap();
        let (ours, refr) = (geglu::geglu(&h).unwrap(), geglu::reference(&h).unwrap());
        let (g1, g2) = both_grads(&ours, &refr);
        let (ef, eg) = (
            rel(&ours, &refr),
            rel(g1.get(&h).unwrap(), g2.get(&h).unwrap()),
        );
        println!("geglu {dt:?}: fwd {ef:.2e} dh {eg:.2e}");
        assert!(ef < tol_fwd && eg < 1e-6, "geglu beyond tolerance");
    }
    // Central differences of the f64 op itself.
    let h = (randn(&[3, 8], DType::F64) * 2.0).unwrap();
    let r = randn(&[3, 4], DType::F64);
    let worst = fd_worst(&[&h], |t| {
        (geglu::geglu(&t[0]).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
    });
    println!("geglu f64 finite differences: worst rel err {worst:.2e} (tol 1e-8)");
    assert!(worst < 1e-8);
}

#[test]
fn adamw_in_place_is_bit_identical_to_the_composition() {
    use anodiff::kernels::adamw::{self, AdamWScalars};
    // More elements than one rayon chunk, so the split is exercised; three steps with and without
    // weight decay, the moments carried from step to step on both sides.
    let n = 70_001;
    let (lr, b1, b2, eps) = (3e-3, 0.9, 0.999, 1e-8);
    for wd in [0.0, 1e-2] {
        let p0 = randn(&[n], DType::F32);
        let (p, m, v) = (
            p0.copy().unwrap(),
            p0.zeros_like().unwrap(),
            p0.zeros_like().unwrap(),
        );
        let (mut rp, mut rm, mut rv) = (
            p0.clone(),
            p0.zeros_like().unwrap(),
            p0.zeros_like().unwrap(),
        );
        for t in 1..=3 {
            let g = randn(&[n], DType::F32);
            let (bc1, bc2) = (1.0 - f64::powi(b1, t), 1.0 - f64::powi(b2, t));
            let s = AdamWScalars {
                decay: (wd != 0.0).then_some(1.0 - lr * wd),
                one_minus_beta1: 1.0 - b1,
                beta2: b2,
                one_minus_beta2: 1.0 - b2,
                inv_sqrt_bc2: 1.0 / bc2.sqrt(),
                eps,
                step: -lr / bc1,
            };
            assert!(adamw::supported(&p, &g, &m, &v));
            adamw::update(&p, &g, &m, &v, s).unwrap();
            // The composition `train::AdamW` uses off the kernels (torch's operation order).
            let base = if wd != 0.0 {
                (&rp * (1.0 - lr * wd)).unwrap()
            } else {
                rp.clone()
            };
            rm = (&rm + ((&g - &rm).unwrap() * (1.0 - b1)).unwrap()).unwrap();
            rv = ((&rv * b2).unwrap() + (g.sqr().unwrap() * (1.0 - b2)).unwrap()).unwrap();
            let den = ((rv.sqrt().unwrap() / bc2.sqrt()).unwrap() + eps).unwrap();
            rp = (base + ((&rm / &den).unwrap() * (-lr / bc1)).unwrap()).unwrap();
            for (what, got, want) in [("p", &p, &rp), ("m", &m, &rm), ("v", &v, &rv)] {
                let (a, b) = (
                    got.to_vec1::<f32>().unwrap(),
                    want.to_vec1::<f32>().unwrap(),
                );
                let differ = a
                    .iter()
                    .zip(&b)
                    .filter(|(x, y)| x.to_bits() != y.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "wd {wd} step {t}: {differ} elements of {what} differ"
                );
            }
        }
        // Shapes that do not match are refused, not written.
        let short = Tensor::zeros(n - 1, DType::F32, &Device::Cpu).unwrap();
        assert!(!adamw::supported(&p, &short, &m, &v));
        assert!(adamw::update(
            &p,
            &short,
            &m,
            &v,
            AdamWScalars {
                decay: None,
                one_minus_beta1: 0.1,
                beta2: 0.9,
                one_minus_beta2: 0.1,
                inv_sqrt_bc2: 1.0,
                eps,
                step: -lr,
            }
        )
        .is_err());
    }
}
