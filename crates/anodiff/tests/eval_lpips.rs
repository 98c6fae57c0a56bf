//! Parity of `anodiff::eval::lpips::Lpips` with the `lpips` package (v0.1, AlexNet and VGG16
//! backbones): distance, spatial map and the gradient with respect to an input; a
//! finite-difference check of that gradient in f64; the loader's errors; IC-LPIPS on top of it.
//!
//! Fixture: tests/fixtures/lpips/reference.safetensors, written by
//! `python tools/parity/make_lpips_fixtures.py`. The backbone weights follow the closed formula of
//! that script (recomputed here), the linear heads are the package's shipped ones.

mod common;

use anodiff::eval::lpips::{Lpips, LpipsNet};
use anodiff::nn::params::Params;
use anodiff::nn::tensor_files::write_safetensors;
use candle_core::{DType, Device, Tensor, Var};
use common::{fixtures, lpips_formula_weights as weights, max_abs, max_diff, temp_dir, tensors};
use std::collections::HashMap;

/// Relative tolerance of distances and maps: max|ours − ref| ≤ TOL · max|ref|.
const TOL: f32 = 2e-4;
/// Relative tolerance of the input gradient. It is proportional to the feature *differences* of
/// two near-identical images, so rounding of the features is amplified: with direct/im2col
/// convolutions (`ANODIFF_WINOGRAD=0`) both nets agree to 2.3e-5, with the default Winograd F(4,3)
/// kernels the 13-layer VGG gradient moves by 3.3e-3 (AlexNet, 5 layers, 2.1e-5).
const TOL_GRAD: f32 = 5e-3;

fn compare(what: &str, ours: &Tensor, reference: &Tensor, tol: f32) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
    let err = max_diff(ours, reference);
    let scale = max_abs(reference);
    println!(
        "{what:12} max|diff| = {err:.3e}  max|ref| = {scale:.3e}  rel = {:.3e}",
        err / scale
    );
    assert!(
        err <= tol * scale,
        "{what}: max|diff| {err:e} > {tol:e} · max|ref| {scale:e}"
    );
}

#[test]
fn lpips_matches_the_lpips_package() {
    let refs = tensors(&fixtures("lpips").join("reference.safetensors"));
    let dir = temp_dir("lpips_parity");
    for net in [LpipsNet::Alex, LpipsNet::Vgg] {
        let path = dir.join(format!("{net}.safetensors"));
        write_safetensors(&path, &weights(net, &refs)).unwrap();
        let model = Lpips::load(&path, &Device::Cpu).unwrap();
        assert_eq!(model.net(), net, "net recognised from the weights");
        let x0 = refs[&format!("{net}.x0")].clone();
        let x1 = Var::from_tensor(&refs[&format!("{net}.x1")]).unwrap();
        let d = model.distance(&x0, x1.as_tensor()).unwrap();
        compare(
            &format!("{net}.dist"),
            &d,
            &refs[&format!("{net}.dist")],
            TOL,
        );
        let grads = d.sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(x1.as_tensor())
            .expect("gradient reaches the input");
        compare(
            &format!("{net}.grad"),
            g,
            &refs[&format!("{net}.grad")],
            TOL_GRAD,
        );
        let maps = model.spatial_maps(&x0, x1.as_tensor()).unwrap();
        let want = &refs[&format!("{net}.map")];
        let ours = Tensor::from_vec(maps.concat(), want.dims(), &Device::Cpu).unwrap();
        compare(&format!("{net}.map"), &ours, want, TOL);
        // The distance of an image to itself is 0, and the local change shows where it is.
        let zero = model.distance(&x0, &x0).unwrap();
        assert!(max_abs(&zero) < 1e-6);
    }
}

#[test]
fn lpips_input_gradient_matches_finite_differences() {
    // A small AlexNet-shaped model in f64 (formula weights, positive heads) on 31×33 images.
    let refs = tensors(&fixtures("lpips").join("reference.safetensors"));
    let map: HashMap<String, Tensor> = weights(LpipsNet::Alex, &refs).into_iter().collect();
    let p = Params::from_tensors(map, &Device::Cpu).with_dtype(DType::F64);
    let model = Lpips::from_params(&p, LpipsNet::Alex).unwrap();
    let (h, w) = (31, 33);
    let n = 3 * h * w;
    let base: Vec<f64> = (0..n)
        .map(|i| ((i * 7919 % 257) as f64 / 128.0) - 1.0)
        .collect();
    let other: Vec<f64> = (0..n)
        .map(|i| ((i * 104729 % 263) as f64 / 131.0) - 1.0)
        .collect();
    let x0 = Tensor::from_vec(other, (1, 3, h, w), &Device::Cpu).unwrap();
    let f = |v: &[f64]| -> f64 {
        let x = Tensor::from_vec(v.to_vec(), (1, 3, h, w), &Device::Cpu).unwrap();
        model
            .distance(&x0, &x)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let x1 = Var::from_tensor(&Tensor::from_vec(base.clone(), (1, 3, h, w), &Device::Cpu).unwrap())
        .unwrap();
    let d = model.distance(&x0, x1.as_tensor()).unwrap();
    let g: Vec<f64> = d
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(x1.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let eps = 1e-5;
    let mut checked = 0;
    for i in (0..n).step_by(97) {
        let mut up = base.clone();
        up[i] += eps;
        let mut down = base.clone();
        down[i] -= eps;
        let fd = (f(&up) - f(&down)) / (2.0 * eps);
        assert!(
            (fd - g[i]).abs() <= 1e-6 + 1e-4 * fd.abs().max(g[i].abs()),
            "element {i}: finite difference {fd:e}, backward {:e}",
            g[i]
        );
        checked += 1;
    }
    assert!(checked > 20);
    assert!(g.iter().any(|v| v.abs() > 1e-6), "gradient is not all zero");
}

#[test]
fn lpips_errors_name_the_problem() {
    let refs = tensors(&fixtures("lpips").join("reference.safetensors"));
    let dir = temp_dir("lpips_errors");
    // A file that is not LPIPS weights.
    let junk = dir.join("junk.safetensors");
    write_safetensors(
        &junk,
        &[(
            "x".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        )],
    )
    .unwrap();
    let e = Lpips::load(&junk, &Device::Cpu).err().unwrap().to_string();
    assert!(
        e.contains("junk.safetensors") && e.contains("net.slice1.0.weight"),
        "{e}"
    );
    // A head missing.
    let mut w = weights(LpipsNet::Alex, &refs);
    w.retain(|(n, _)| n != "lin3.model.1.weight");
    let partial = dir.join("partial.safetensors");
    write_safetensors(&partial, &w).unwrap();
    let e = Lpips::load(&partial, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("lin3.model.1.weight"), "{e}");
    // Images too small for AlexNet.
    let full = dir.join("alex.safetensors");
    write_safetensors(&full, &weights(LpipsNet::Alex, &refs)).unwrap();
    let m = Lpips::load(&full, &Device::Cpu).unwrap();
    let x = Tensor::zeros((1, 3, 24, 40), DType::F32, &Device::Cpu).unwrap();
    let e = m.distance(&x, &x).err().unwrap().to_string();
    assert!(e.contains("31x31") && e.contains("24x40"), "{e}");
}

#[test]
fn ic_lpips_is_zero_for_copies_and_grows_with_spread() {
    use anodiff::eval::ic_lpips::ic_lpips;
    use rand::{Rng, SeedableRng};
    let refs = tensors(&fixtures("lpips").join("reference.safetensors"));
    let dir = temp_dir("ic_lpips");
    let path = dir.join("alex.safetensors");
    write_safetensors(&path, &weights(LpipsNet::Alex, &refs)).unwrap();
    let net = Lpips::load(&path, &Device::Cpu).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let base: Vec<image::RgbImage> = (0..2)
        .map(|k| {
            image::RgbImage::from_fn(40, 40, |x, y| {
                image::Rgb([(x * 6) as u8, (y * 6) as u8, (100 * k) as u8])
            })
        })
        .collect();
    // Generated: three noisy copies of each training image, with noise of amplitude `a`.
    let mut copies = |a: i32| -> Vec<image::RgbImage> {
        base.iter()
            .flat_map(|b| std::iter::repeat_n(b, 3))
            .map(|b| {
                image::RgbImage::from_fn(40, 40, |x, y| {
                    let p = b.get_pixel(x, y).0;
                    image::Rgb(p.map(|v| (v as i32 + rng.random_range(-a..=a)).clamp(0, 255) as u8))
                })
            })
            .collect()
    };
    let exact = ic_lpips(&net, &base, &copies(0), &Device::Cpu)
        .unwrap()
        .unwrap();
    assert_eq!((exact.clusters_used, exact.clusters), (2, 2));
    assert!(exact.value.abs() < 1e-6, "{exact:?}");
    let small = ic_lpips(&net, &base, &copies(10), &Device::Cpu)
        .unwrap()
        .unwrap();
    let large = ic_lpips(&net, &base, &copies(60), &Device::Cpu)
        .unwrap()
        .unwrap();
    println!(
        "IC-LPIPS: copies {}, noise ±10 {}, noise ±60 {}",
        exact.value, small.value, large.value
    );
    assert!(
        small.value > 0.0 && large.value > small.value,
        "{small:?} {large:?}"
    );
    let other = image::RgbImage::new(32, 32);
    assert!(ic_lpips(&net, &base, &[other], &Device::Cpu).is_err());
}
