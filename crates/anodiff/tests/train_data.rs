//! The image-folder dataset and the seeded data order.
//! Run: cargo test --release -p anodiff --test train_data -- --nocapture

mod common;

use anodiff::data::folder::{resize_center_crop, ImageFolder};
use anodiff::train::{stream_seed, DataOrder};
use candle_core::Device;
use common::temp_dir;
use image::{Rgb, RgbImage};

/// 30×10: red | green | blue thirds.
fn stripes() -> RgbImage {
    RgbImage::from_fn(30, 10, |x, _| match x / 10 {
        0 => Rgb([255, 0, 0]),
        1 => Rgb([0, 255, 0]),
        _ => Rgb([0, 0, 255]),
    })
}

#[test]
fn folder_lists_resizes_crops_and_names_bad_files() {
    let dir = temp_dir("folder");
    stripes().save(dir.join("b.png")).unwrap();
    RgbImage::from_pixel(7, 21, Rgb([255, 255, 255]))
        .save(dir.join("a.BMP"))
        .unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let ds = ImageFolder::open(&dir, 16).unwrap();
    let names: Vec<String> = ds
        .paths()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["a.BMP", "b.png"]);
    let dev = Device::Cpu;
    let batch = ds.batch(&[1, 0], &dev).unwrap();
    assert_eq!(batch.dims(), &[2, 3, 16, 16]);
    // Shorter side 10 -> 16 makes the stripes 48 wide; the centre crop is the green third.
    let img = batch.get(0).unwrap();
    let min = img.min_all().unwrap().to_scalar::<f32>().unwrap();
    let max = img.max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(min >= -1.0 && max <= 1.0);
    let px = img.to_vec3::<f32>().unwrap();
    for (c, want) in [(0, -1.0), (1, 1.0), (2, -1.0)] {
        let v = px[c][8][8];
        assert!((v - want).abs() < 1e-6, "channel {c}: {v}");
    }
    // White stays white.
    let white = batch
        .get(1)
        .unwrap()
        .min_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(white, 1.0);
    assert_eq!(resize_center_crop(&stripes(), 10).dimensions(), (10, 10));

    // A broken file: the error names it.
    std::fs::write(dir.join("c.jpg"), b"garbage").unwrap();
    let ds = ImageFolder::open(&dir, 16).unwrap();
    let e = ds.preload(&dev).unwrap_err().to_string();
    println!("bad image: {e}");
    assert!(e.contains("c.jpg"), "{e}");

    let empty = temp_dir("empty");
    let e = ImageFolder::open(&empty, 16).err().unwrap().to_string();
    assert!(e.contains("no training images"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn data_order_is_a_seeded_epoch_shuffle() {
    let mut o = DataOrder::new(3, 5).unwrap();
    let a: Vec<usize> = (0..5).flat_map(|_| o.next_batch(2)).collect();
    // Every epoch is a permutation of 0..5.
    let mut e0 = a[..5].to_vec();
    e0.sort();
    assert_eq!(e0, vec![0, 1, 2, 3, 4]);
    let mut e1 = a[5..10].to_vec();
    e1.sort();
    assert_eq!(e1, vec![0, 1, 2, 3, 4]);
    assert_ne!(a[..5], a[5..10], "epochs are reshuffled");
    // Same seed, same stream, however it is cut into batches; the (epoch, pos) state resumes it.
    let mut p = DataOrder::new(3, 5).unwrap();
    let b: Vec<usize> = (0..10).flat_map(|_| p.next_batch(1)).collect();
    assert_eq!(a, b);
    let mut q = DataOrder::new(3, 5).unwrap();
    q.next_batch(7);
    let saved = serde_json::to_string(&q).unwrap();
    let mut r: DataOrder = serde_json::from_str(&saved).unwrap();
    assert_eq!(r.next_batch(3), a[7..10].to_vec());
    assert_ne!(DataOrder::new(4, 5).unwrap().next_batch(5), a[..5].to_vec());
    assert_ne!(stream_seed(1, 2, 0), stream_seed(1, 2, 1));
    assert_ne!(stream_seed(1, 2, 0), stream_seed(1, 3, 0));
    assert!(DataOrder::new(0, 0).is_err());
}
