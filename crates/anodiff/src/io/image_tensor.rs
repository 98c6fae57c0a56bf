//! Conversions between images and tensors: [-1, 1] for the diffusion models, [0, 1] for the
//! localisation network, and binary masks.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// RGB image → `[1, 3, H, W]` f32 in [-1, 1].
pub fn rgb_to_tensor(img: &image::RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|&v| v as f32 / 127.5 - 1.0)
        .collect();
    Ok(Tensor::from_vec(data, (h as usize, w as usize, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?)
}

/// RGB image → `[3, H, W]` f32 in [0, 1] (no batch dimension; the localisation network's input).
pub fn rgb_to_unit_tensor(img: &image::RgbImage, dev: &Device) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = px.0[c] as f32 / 255.0;
        }
    }
    Ok(Tensor::from_vec(data, (3, h, w), dev)?)
}

/// Greyscale mask → `[1, 1, H, W]` f32 in {0, 1}: white (≥ 0.5) marks the region to repaint.
pub fn mask_to_tensor(mask: &image::GrayImage, device: &Device) -> Result<Tensor> {
    let (w, h) = mask.dimensions();
    let data: Vec<f32> = mask
        .as_raw()
        .iter()
        .map(|&v| if v as f32 / 255.0 >= 0.5 { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(
        data,
        (1, 1, h as usize, w as usize),
        device,
    )?)
}

/// `[B, 3, H, W]` in [-1, 1] → RGB images (values clamped, rounded as diffusers does).
pub fn tensor_to_rgb(x: &Tensor) -> Result<Vec<image::RgbImage>> {
    let (b, c, h, w) = x.dims4()?;
    if c != 3 {
        return Err(Error::invalid(format!(
            "expected 3 channels to make an image, got {c}"
        )));
    }
    let x = ((x.to_dtype(DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let x = (x * 255.0)?.round()?.permute((0, 2, 3, 1))?.contiguous()?;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let v: Vec<u8> = x
            .get(i)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&p| p as u8)
            .collect();
        out.push(image::RgbImage::from_raw(w as u32, h as u32, v).expect("buffer size matches"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact() {
        let img = image::RgbImage::from_fn(5, 3, |x, y| {
            image::Rgb([(x * 50) as u8, (y * 100) as u8, 255])
        });
        let t = rgb_to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 3, 5]);
        let back = tensor_to_rgb(&t).unwrap();
        assert_eq!(back[0], img);
    }

    #[test]
    fn mask_binarises_at_half() {
        let m = image::GrayImage::from_raw(3, 1, vec![0, 127, 128]).unwrap();
        let t = mask_to_tensor(&m, &Device::Cpu).unwrap();
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0, 0.0, 1.0]
        );
    }
}
