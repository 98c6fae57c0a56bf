//! Image files: which extensions count as images, decoding with errors that name the file,
//! atomic PNG output, and loading a list of images at one square training size or at a scale
//! (for windows cut at native resolution).

use super::atomic::write_atomic;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::Path;

/// File extensions read as images everywhere (datasets, training folders, generated pairs),
/// compared case-insensitively.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// Whether the file name has one of the [`IMAGE_EXTENSIONS`] (the file itself is not opened).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Encodes an RGB8 image as PNG and writes it atomically.
pub fn save_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    write_atomic(path, buf.get_ref())
}

/// Reads any supported image file, with an error naming the file.
pub fn load_image(path: &Path) -> Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: format!("cannot decode image: {e}"),
        })
}

/// Rows of images (each row wrapped every `cols` images), 2-px white gaps, as one PNG.
pub fn save_png_grid(rows: &[&[image::RgbImage]], cols: usize, path: &Path) -> Result<()> {
    let (w, h) = rows
        .iter()
        .flat_map(|r| r.iter())
        .next()
        .map(|i| (i.width(), i.height()))
        .unwrap_or((1, 1));
    let cols = cols.max(1);
    let lines: usize = rows.iter().map(|r| r.len().div_ceil(cols).max(1)).sum();
    let mut grid = image::RgbImage::from_pixel(
        cols as u32 * (w + 2),
        lines as u32 * (h + 2) + 4 * rows.len() as u32,
        image::Rgb([255, 255, 255]),
    );
    let mut y0 = 0u32;
    for row in rows {
        for (i, img) in row.iter().enumerate() {
            let (c, r) = ((i % cols) as u32, (i / cols) as u32);
            image::imageops::replace(
                &mut grid,
                img,
                (c * (w + 2)) as i64,
                (y0 + r * (h + 2)) as i64,
            );
        }
        y0 += row.len().div_ceil(cols).max(1) as u32 * (h + 2) + 4;
    }
    save_png(path, &grid)
}

/// Loads an image file as RGB.
pub fn load_rgb(path: &Path) -> Result<image::RgbImage> {
    Ok(load_image(path)?.to_rgb8())
}

/// Loads a mask file as greyscale.
pub fn load_mask(path: &Path) -> Result<image::GrayImage> {
    Ok(load_image(path)?.to_luma8())
}

/// Loads every item with `load` (in parallel; the order of `items` is kept) and resizes each
/// image to `side`×`side` with the bilinear (triangle) filter — how training and evaluation
/// bring a dataset's images to one size.
pub fn load_square<T: Sync>(
    items: &[T],
    side: u32,
    load: impl Fn(&T) -> Result<image::RgbImage> + Sync,
) -> Result<Vec<image::RgbImage>> {
    load_resized(items, load, |_| (side, side))
}

/// Loads every item in parallel (order kept) and resizes it bilinearly to `dims(its size)`;
/// an image already that size is kept as it is (what `resize` would copy).
fn load_resized<T: Sync>(
    items: &[T],
    load: impl Fn(&T) -> Result<image::RgbImage> + Sync,
    dims: impl Fn((u32, u32)) -> (u32, u32) + Sync,
) -> Result<Vec<image::RgbImage>> {
    items
        .par_iter()
        .map(|item| {
            let img = load(item)?;
            let (w, h) = dims(img.dimensions());
            if (w, h) == img.dimensions() {
                return Ok(img);
            }
            Ok(image::imageops::resize(
                &img,
                w,
                h,
                image::imageops::FilterType::Triangle,
            ))
        })
        .collect()
}

/// The size of a `w`×`h` image scaled by `scale`, the factor raised where needed so that both
/// sides are at least `min_side` (a `min_side`² window always fits). The aspect ratio is kept.
pub fn scaled_dims((w, h): (u32, u32), scale: f64, min_side: u32) -> (u32, u32) {
    let s = scale
        .max(min_side as f64 / w.max(1) as f64)
        .max(min_side as f64 / h.max(1) as f64);
    (
        ((w as f64 * s).round() as u32).max(min_side),
        ((h as f64 * s).round() as u32).max(min_side),
    )
}

/// Loads every item scaled as [`scaled_dims`] says (bilinear), in parallel.
pub fn load_scaled<T: Sync>(
    items: &[T],
    scale: f64,
    min_side: u32,
    load: impl Fn(&T) -> Result<image::RgbImage> + Sync,
) -> Result<Vec<image::RgbImage>> {
    load_resized(items, load, |d| scaled_dims(d, scale, min_side))
}

/// The centred `side`² window of `img` (clamped to the image where it is smaller).
pub fn centre_window(img: &image::RgbImage, side: u32) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = (side.min(w), side.min(h));
    image::imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_image_names_the_file() {
        let err = load_image(Path::new("/nonexistent/x.png")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.png"));
    }

    #[test]
    fn extensions_match_case_insensitively() {
        assert!(is_image_file(Path::new("a/b.PNG")));
        assert!(is_image_file(Path::new("b.bmp")));
        assert!(!is_image_file(Path::new("b.txt")));
        assert!(!is_image_file(Path::new("png")));
    }

    #[test]
    fn scaling_keeps_the_aspect_and_always_fits_a_window() {
        // BSData's frames: native, halved, and a scale too small for a 64-px window.
        assert_eq!(scaled_dims((1130, 460), 1.0, 64), (1130, 460));
        assert_eq!(scaled_dims((1130, 460), 0.5, 64), (565, 230));
        assert_eq!(scaled_dims((1130, 460), 0.05, 64), (157, 64));
        assert_eq!(scaled_dims((40, 100), 1.0, 64), (64, 160));
        let img = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = centre_window(&img, 3);
        assert_eq!(c.dimensions(), (3, 3));
        assert_eq!(c.get_pixel(0, 0), &image::Rgb([2, 1, 0]));
        assert_eq!(centre_window(&img, 9).dimensions(), (7, 5));
    }
}
