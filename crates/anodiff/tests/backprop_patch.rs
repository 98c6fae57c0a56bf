//! The workspace builds against `vendor/candle-core`, candle-core with anodiff's backward patch
//! (`vendor/candle-core.patch`, re-created by `tools/vendor_candle.sh`): a first gradient is
//! stored as computed instead of added to a zero tensor, and operands that lead to no variable
//! get no gradient at all. These tests fail on stock candle (the untracked operands would hold
//! gradients) and check that every accumulation path still gives the right numbers.
//! Run: cargo test --release -p anodiff --test backprop_patch

use candle_core::{Device, Tensor, Var, D};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn untracked_operands_get_no_gradient() {
    let dev = Device::Cpu;
    let w = Var::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
    let x = Tensor::new(&[[0.5f32, -1.], [2., 0.25]], &dev).unwrap();
    let scale = Tensor::new(&[[3f32, 3.], [3., 3.]], &dev).unwrap();
    // matmul, mul and div each with one constant operand.
    let y = x.matmul(w.as_tensor()).unwrap();
    let loss = (y.mul(&scale).unwrap().div(&scale).unwrap())
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    assert!(
        grads.get(&x).is_none(),
        "the constant input got a gradient: patch not in effect"
    );
    assert!(grads.get(&scale).is_none());
    // d/dw sum(x·w) = xᵀ·1.
    assert_close(
        &values(grads.get(w.as_tensor()).unwrap()),
        &[2.5, 2.5, -0.75, -0.75],
    );
}

#[test]
fn first_and_accumulated_gradients_are_right() {
    let dev = Device::Cpu;
    let a = Var::new(&[1f32, -2., 3.], &dev).unwrap();
    let b = Var::new(&[0.5f32, 4., -1.], &dev).unwrap();
    // a appears three times (accumulation), b once through a subtraction (negated first
    // gradient) and once through a product.
    let at = a.as_tensor();
    let bt = b.as_tensor();
    let loss = ((at - bt).unwrap() + at.mul(at).unwrap())
        .unwrap()
        .mul(&Tensor::new(&[1f32, 2., 3.], &dev).unwrap())
        .unwrap()
        .add(&at.mul(bt).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    // loss = Σ c·(a − b + a²) + a·b with c = (1, 2, 3):
    // ∂a = c·(1 + 2a) + b, ∂b = −c + a.
    let (av, bv, c) = ([1f32, -2., 3.], [0.5f32, 4., -1.], [1f32, 2., 3.]);
    let da: Vec<f32> = (0..3).map(|i| c[i] * (1. + 2. * av[i]) + bv[i]).collect();
    let db: Vec<f32> = (0..3).map(|i| -c[i] + av[i]).collect();
    assert_close(&values(grads.get(at).unwrap()), &da);
    assert_close(&values(grads.get(bt).unwrap()), &db);
}

#[test]
fn a_gradient_through_a_transpose_or_broadcast_is_contiguous() {
    let dev = Device::Cpu;
    // A linear layer's weight is used transposed; its gradient arrives as a transposed view and
    // must be stored contiguous (the in-place optimiser requires it).
    let w = Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
    let bias = Var::new(&[0.1f32, 0.2], &dev).unwrap();
    let x = Tensor::new(&[[1f32, 0., -1.], [2., 1., 0.]], &dev).unwrap();
    let y = x
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(bias.as_tensor())
        .unwrap();
    let loss = y
        .sqr()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let gw = grads.get(w.as_tensor()).unwrap();
    let gb = grads.get(bias.as_tensor()).unwrap();
    assert!(gw.is_contiguous() && gb.is_contiguous());
    // y = x·wᵀ + b; ∂w = 2·yᵀ·x, ∂b = 2·Σ_rows y.
    let yv = values(&y);
    let xv = [1f32, 0., -1., 2., 1., 0.];
    let mut want_w = [0f32; 6];
    for o in 0..2 {
        for i in 0..3 {
            want_w[o * 3 + i] = (0..2).map(|r| 2. * yv[r * 2 + o] * xv[r * 3 + i]).sum();
        }
    }
    let want_b: Vec<f32> = (0..2)
        .map(|o| (0..2).map(|r| 2. * yv[r * 2 + o]).sum())
        .collect();
    assert_close(&values(gw), &want_w);
    assert_close(&values(gb), &want_b);
}

/// Naive `sum_keepdim(dims)` of a contiguous [a, b, c, d] tensor, in f64.
fn naive_sum(x: &[f32], shape: [usize; 4], dims: &[usize]) -> Vec<f32> {
    let out: Vec<usize> = (0..4)
        .map(|k| if dims.contains(&k) { 1 } else { shape[k] })
        .collect();
    let mut acc = vec![0f64; out.iter().product()];
    for (i, &v) in x.iter().enumerate() {
        let mut rest = i;
        let mut idx = [0usize; 4];
        for k in (0..4).rev() {
            idx[k] = rest % shape[k];
            rest /= shape[k];
        }
        let mut o = 0;
        for k in 0..4 {
            o = o * out[k] + if dims.contains(&k) { 0 } else { idx[k] };
        }
        acc[o] += v as f64;
    }
    acc.into_iter().map(|v| v as f32).collect()
}

/// A deterministic [a, b, c, d] tensor (values in about ±0.5) and its data.
fn patterned(shape: [usize; 4], k: usize) -> (Vec<f32>, Tensor) {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * k % 101) as f32 - 50.0) * 0.01)
        .collect();
    let x = Tensor::from_vec(data.clone(), &shape, &Device::Cpu).unwrap();
    (data, x)
}

#[test]
fn sums_over_any_dims_match_a_naive_sum() {
    // The patch's run-wise reduction (`reduce_sum_runs`) replaces stock candle's per-element
    // index arithmetic for every reduced-dims pattern except "the last dims": all 15 patterns on
    // a shape with a size-1 dim (merged away) and odd sizes, and the broadcast gradients that use
    // it (a per-channel bias over [B, C, H, W]: dims 0, 2, 3 reduced; a weight over the last dim:
    // the leading dims 0, 1, 2 reduced).
    let shape = [3usize, 1, 5, 7];
    let (data, x) = patterned(shape, 37);
    for mask in 1u32..16 {
        let dims: Vec<usize> = (0..4).filter(|k| mask & (1 << k) != 0).collect();
        let got = values(&x.sum_keepdim(dims.as_slice()).unwrap());
        assert_close(&got, &naive_sum(&data, shape, &dims));
    }
    let shape = [4usize, 6, 5, 3];
    let (data, x) = patterned(shape, 13);
    let bias = Var::new(vec![0f32; 6], &Device::Cpu).unwrap();
    let y = x
        .broadcast_add(&bias.as_tensor().reshape((1, 6, 1, 1)).unwrap())
        .unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let want = vec![(4 * 5 * 3) as f32; 6];
    assert_close(&values(grads.get(&bias).unwrap()), &want);
    let w = Var::new(vec![0f32; 3], &Device::Cpu).unwrap();
    let y = x.broadcast_mul(w.as_tensor()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_close(
        &values(grads.get(&w).unwrap()),
        &naive_sum(&data, shape, &[0, 1, 2]),
    );
}
