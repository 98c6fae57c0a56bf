//! `anodiff foreground`: previews a foreground (object) mask estimator on an MVTec-layout dataset
//! as one PNG, a row per image: the image | its foreground mask | the background image with the
//! foreground blacked out (what DualAnoDiff's background compensation sees).

use anodiff::data::foreground::{
    black_out_foreground, ClassicalForeground, ForegroundSpec, FOREGROUND_SPECS,
};
use anodiff::data::mask_ops::area_fraction;
use anodiff::data::mvtec::{MvtecDataset, OnBadFile, Sample};
use anyhow::{bail, Context, Result};
use image::imageops::{self, FilterType};
use image::{GrayImage, Rgb, RgbImage};
use std::path::PathBuf;

/// Which images of the dataset to preview.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// `train/good`.
    Train,
    /// `test/good` and every `test/<defect>` folder.
    Test,
    /// Both.
    All,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each row: the image | its estimated foreground mask (white = object) | the background \
                  image, i.e. the image with the foreground blacked out, which is what DualAnoDiff's \
                  background compensation sees. Images are picked evenly over the sorted list of the \
                  chosen split. Per row the command prints the foreground share and, for the \
                  classical method, the candidate background regions or why it fell back to the \
                  whole image (e.g. a texture or a frame-filling crop has no distinct background).\n\n\
                  Example: anodiff foreground --dataset ../shared/data/mtd --split test --n 12 \
                  --out runs/foreground/mtd.png"
)]
pub struct Args {
    /// Dataset folder in the MVTec layout (train/good, test/<type>, ground_truth/<type>).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Which images to preview.
    #[arg(long, value_enum, default_value = "train")]
    pub split: Which,
    /// Number of rows (images).
    #[arg(long, default_value_t = 12)]
    pub n: usize,
    /// Foreground estimator: `classical` (weight-free: border vs centre colours, checked by
    /// edges) or `dir:PATH` (your masks: PATH/<stem>.png or PATH/<stem>_mask.png per image).
    #[arg(long, default_value = "classical")]
    pub method: String,
    /// Height of each panel in pixels (its width follows the images' median aspect ratio).
    #[arg(long, default_value_t = 160)]
    pub height: u32,
    /// PNG file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// Letterbox padding: mid-grey, so it cannot be mistaken for black (blacked-out foreground) or
/// white (mask).
const PAD: Rgb<u8> = Rgb([128, 128, 128]);

pub fn run(a: Args) -> Result<()> {
    if a.n == 0 || a.height < 8 {
        bail!("--n must be at least 1 and --height at least 8");
    }
    let spec = ForegroundSpec::parse(&a.method)
        .with_context(|| format!("--method (valid: {})", FOREGROUND_SPECS.join(", ")))?;
    let estimator = spec.build()?;
    // The classical method is run through its detailed entry point to print its diagnostics.
    let classical = matches!(spec, ForegroundSpec::Classical).then(ClassicalForeground::default);
    let (ds, report) = MvtecDataset::open(&a.dataset, OnBadFile::Skip)?;
    if !report.errors.is_empty() {
        eprintln!(
            "warning: {} problem file(s) left out (run `anodiff dataset-check` for the list)",
            report.errors.len()
        );
    }
    let mut samples: Vec<&Sample> = Vec::new();
    if a.split != Which::Test {
        samples.extend(&ds.train_good);
    }
    if a.split != Which::Train {
        samples.extend(&ds.test_good);
        samples.extend(ds.defects.iter().flat_map(|d| &d.samples));
    }
    if samples.is_empty() {
        bail!("{}: no images in the chosen split", a.dataset.display());
    }
    let n = a.n.min(samples.len());
    let picked: Vec<&Sample> = (0..n).map(|i| samples[i * samples.len() / n]).collect();

    let mut aspects: Vec<f64> = picked
        .iter()
        .map(|s| s.width as f64 / s.height.max(1) as f64)
        .collect();
    aspects.sort_by(f64::total_cmp);
    let cell_h = a.height;
    let cell_w = ((cell_h as f64 * aspects[aspects.len() / 2]).round() as u32).clamp(8, 4 * cell_h);

    println!("{}", estimator.describe());
    let mut rows = Vec::with_capacity(n);
    let mut fallbacks = 0;
    for s in &picked {
        let img = MvtecDataset::load_image(s)?;
        let (mask, note) = match &classical {
            Some(c) => {
                let e = c
                    .estimate_detailed(&img)
                    .with_context(|| format!("{}", s.path.display()))?;
                let regions: Vec<String> = e
                    .regions
                    .iter()
                    .map(|r| {
                        format!(
                            "{:.1}%:{:.1}/{:.1}{}",
                            100.0 * r.fraction,
                            r.edge_to_object,
                            r.edge_to_region,
                            if r.kept { "" } else { "x" }
                        )
                    })
                    .collect();
                let note = match e.fallback {
                    Some(f) => {
                        fallbacks += 1;
                        format!("whole image: {f}")
                    }
                    None => format!("background {:.1} %", 100.0 * e.background),
                };
                // Candidate background regions: share of the image, edge strength of the outline
                // over the object's / the region's own (x = rejected, stays object).
                let note = format!("{note}  [{}]", regions.join(" "));
                (e.mask, note)
            }
            None => (estimator.estimate(&img, Some(&s.path))?, String::new()),
        };
        let share = area_fraction(&mask);
        println!(
            "{:>5.1} % foreground  {}  {note}",
            100.0 * share,
            s.path.strip_prefix(&a.dataset).unwrap_or(&s.path).display()
        );
        let background = black_out_foreground(&img, &mask)?;
        rows.push([
            letterbox(&img, cell_w, cell_h),
            letterbox(&gray_to_rgb(&mask), cell_w, cell_h),
            letterbox(&background, cell_w, cell_h),
        ]);
    }
    let gap = 2u32;
    let mut sheet = RgbImage::from_pixel(
        3 * (cell_w + gap) - gap,
        n as u32 * (cell_h + gap) - gap,
        Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, panel) in row.iter().enumerate() {
            let (x, y) = (c as u32 * (cell_w + gap), r as u32 * (cell_h + gap));
            imageops::replace(&mut sheet, panel, x as i64, y as i64);
        }
    }
    anodiff::io::image::save_png(&a.out, &sheet)?;
    if classical.is_some() {
        println!("{fallbacks} of {n} image(s) fell back to whole-image foreground");
    }
    println!(
        "wrote {} ({n} rows: image | mask | background)",
        a.out.display()
    );
    Ok(())
}

fn gray_to_rgb(m: &GrayImage) -> RgbImage {
    RgbImage::from_fn(m.width(), m.height(), |x, y| {
        let v = m.get_pixel(x, y)[0];
        Rgb([v, v, v])
    })
}

/// `img` scaled to fit `w`×`h` (aspect kept), centred on mid-grey.
fn letterbox(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let s = (w as f64 / img.width() as f64).min(h as f64 / img.height() as f64);
    let nw = ((img.width() as f64 * s).round() as u32).clamp(1, w);
    let nh = ((img.height() as f64 * s).round() as u32).clamp(1, h);
    let scaled = imageops::resize(img, nw, nh, FilterType::Triangle);
    let mut out = RgbImage::from_pixel(w, h, PAD);
    imageops::replace(
        &mut out,
        &scaled,
        ((w - nw) / 2) as i64,
        ((h - nh) / 2) as i64,
    );
    out
}
