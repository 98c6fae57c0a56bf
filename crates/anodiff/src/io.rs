//! File output that never leaves a half-written file behind: write to a temporary sibling, then rename.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically (temp file in the same directory + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("anodiff-io-{}", std::process::id()));
        let p = dir.join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_image_names_the_file() {
        let err = load_image(Path::new("/nonexistent/x.png")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.png"));
    }
}
