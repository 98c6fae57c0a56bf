//! The `detect` jobs: AnomalySD (and its ablations and the nearest-neighbour baseline, from the
//! same computations) over the evaluation images of a split, written in the prediction format
//! that `anodiff eval` scores; and the production-line form over a plain folder of images.
//!
//! The multi-scale branch does not depend on the shots, so it runs once per image however many
//! shot draws (seeds) are asked for; each draw adds one feature pass and at most one inpainting.

use super::infer::{DetectSettings, Detector, MultiScale, Shots};
use super::run::DetectRun;
use crate::data::split::SplitManifest;
use crate::error::{Error, Result};
use crate::eval::localisation::predict::resize_bilinear;
use crate::eval::npy::Map2;
use crate::eval::predictions::{PredictionWriter, HEADER, SCORES_FILE};
use crate::io::json::write_json;
use crate::io::shard::Shard;
use crate::runtime::Lanes;
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a prediction folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `S = (1 − α)·S_ms + α·S_pg` (AnomalySD).
    AnomalySd,
    /// Multi-scale branch only (α = 0).
    Ms,
    /// Prototype branch only (α = 1).
    Pg,
    /// PatchCore-style nearest-neighbour deviation on the same features (no inpainting).
    Knn,
    /// Control without a model: the map is each pixel's grey level, the image score the image's
    /// mean grey level. MTD's defect images are brighter than its good ones
    /// (`../shared/data/README.md`), so an image-level win must beat this.
    Brightness,
}

impl Method {
    /// Every method, in output order.
    pub const ALL: [Method; 5] = [
        Method::AnomalySd,
        Method::Ms,
        Method::Pg,
        Method::Knn,
        Method::Brightness,
    ];

    /// Its command-line / folder name.
    pub fn name(self) -> &'static str {
        match self {
            Method::AnomalySd => "anomalysd",
            Method::Ms => "ms",
            Method::Pg => "pg",
            Method::Knn => "knn",
            Method::Brightness => "brightness",
        }
    }

    fn needs_ms(self) -> bool {
        matches!(self, Method::AnomalySd | Method::Ms)
    }

    /// Whether its maps depend on the normal shots (those that do not are computed once for
    /// every shot draw).
    pub fn needs_shots(self) -> bool {
        !matches!(self, Method::Ms | Method::Brightness)
    }

    /// The image score of one of its maps.
    fn image_score(self, settings: &DetectSettings, map: &[f32]) -> f32 {
        match self {
            Method::Brightness => map.iter().sum::<f32>() / map.len().max(1) as f32,
            _ => settings.score.of(map),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown method `{s}` (anomalysd, ms, pg, knn, brightness)"
                ))
            })
    }
}

/// `k` shots from `train/good`, drawn with `seed` (a seeded shuffle of the sorted list).
pub fn draw_shots(split: &SplitManifest, k: usize, seed: u64) -> Result<Vec<(String, RgbImage)>> {
    if k == 0 {
        return Err(Error::invalid("--shots must be at least 1"));
    }
    if split.train_good.len() < k {
        return Err(Error::invalid(format!(
            "{}: {} shots asked, train/good has {} images",
            split.dataset.display(),
            k,
            split.train_good.len()
        )));
    }
    let mut order: Vec<usize> = (0..split.train_good.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(crate::seed::mix(
        seed ^ 0x5407,
    )));
    order[..k]
        .iter()
        .map(|&i| {
            let e = &split.train_good[i];
            Ok((e.image.clone(), split.load_image(e)?))
        })
        .collect()
}

/// Per-image cost, in `detect.json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageTiming {
    /// Defect type or `good`.
    pub defect: String,
    /// File stem.
    pub stem: String,
    /// Wall seconds for this image (all branches, all shot draws).
    pub secs: f64,
    /// Inpaintings run for it.
    pub inpaintings: usize,
}

/// What one split run produced (also written to `detect.json` in every output folder).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DetectSummary {
    /// Category prompt used.
    pub prompt: String,
    /// Settings used.
    pub settings: DetectSettings,
    /// Shots per draw (image paths relative to the dataset), one list per draw.
    pub shots: Vec<Vec<String>>,
    /// Images scored.
    pub images: usize,
    /// Mean seconds per image.
    pub secs_per_image: f64,
    /// Inpaintings per second overall.
    pub inpaintings_per_sec: f64,
    /// Per image.
    pub timings: Vec<ImageTiming>,
}

/// Where the maps of one (shot draw, method) go.
#[derive(Clone, Debug)]
pub struct Output {
    /// Index into the shot draws.
    pub draw: usize,
    /// Which map.
    pub method: Method,
    /// The prediction folder.
    pub dir: PathBuf,
    /// Where to write the multi-scale branch's repainted "normal" image of every evaluation image
    /// (`<defect>/<stem>.png`, model size), if anywhere.
    pub normal_dir: Option<PathBuf>,
}

fn to_original(map: &[f32], size: usize, h: usize, w: usize) -> Result<Map2> {
    Map2::new(h, w, resize_bilinear(map, size, size, h, w))
}

/// The maps of the requested methods (model size) and the inpaintings the prototype branch ran.
/// One method's map at model size.
type MethodMap = (Method, Vec<f32>);
type MethodMaps = (Vec<MethodMap>, usize);

/// The grey level (0–1, mean of the channels) of `img` resized to `s × s`.
fn grey_at(img: &RgbImage, s: usize) -> Vec<f32> {
    let grey: Vec<f32> = img
        .pixels()
        .map(|p| (p[0] as f32 + p[1] as f32 + p[2] as f32) / (3.0 * 255.0))
        .collect();
    resize_bilinear(&grey, img.height() as usize, img.width() as usize, s, s)
}

/// The maps of every requested method for one image, at model size.
fn maps_for(
    det: &Detector,
    methods: &[Method],
    ms: Option<&MultiScale>,
    shots: Option<&Shots>,
    img: &RgbImage,
) -> Result<MethodMaps> {
    let s = det.size();
    let repaint = methods
        .iter()
        .any(|m| matches!(m, Method::AnomalySd | Method::Pg));
    let pg = match shots {
        Some(sh) if repaint || methods.contains(&Method::Knn) => {
            Some(det.prototype(sh, img, repaint)?)
        }
        _ => None,
    };
    let zero = vec![0f32; s * s];
    let alpha = det.settings().alpha;
    let mut out = Vec::new();
    for &m in methods {
        let map = match m {
            Method::AnomalySd => det.combine(
                &ms.expect("ms computed").map,
                &pg.as_ref().expect("pg computed").map,
                alpha,
            ),
            Method::Ms => det.combine(&ms.expect("ms computed").map, &zero, 0.0),
            Method::Pg => det.combine(&zero, &pg.as_ref().expect("pg computed").map, 1.0),
            Method::Knn => det.smooth(pg.as_ref().expect("pg computed").deviation.clone()),
            Method::Brightness => grey_at(img, s),
        };
        out.push((m, map));
    }
    Ok((out, pg.map_or(0, |p| p.inpaintings)))
}

/// Runs the detector over the evaluation images of `split` (`test/good` and every defect's test
/// part) for every shot draw in `shots` and writes each [`Output`]. `progress(done, total)`.
#[allow(clippy::too_many_arguments)]
pub fn detect_split(
    run: &DetectRun,
    split: &SplitManifest,
    category: &str,
    settings: &DetectSettings,
    shots: &[Vec<(String, RgbImage)>],
    outputs: &[Output],
    progress: impl FnMut(usize, usize, f64),
) -> Result<DetectSummary> {
    detect_split_shard(
        run,
        split,
        category,
        settings,
        shots,
        outputs,
        Shard::ALL,
        progress,
    )
}

/// [`detect_split`] over one shard's images (image `i` of the evaluation list when
/// `shard.owns(i)`): maps as usual, scores in `scores.shard-I-of-N.csv` and timings in
/// `detect.shard-I-of-N.json`; [`merge_score_shards`] joins the scores once every shard is done.
#[allow(clippy::too_many_arguments)]
pub fn detect_split_shard(
    run: &DetectRun,
    split: &SplitManifest,
    category: &str,
    settings: &DetectSettings,
    shots: &[Vec<(String, RgbImage)>],
    outputs: &[Output],
    shard: Shard,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<DetectSummary> {
    let prompt = run.prompt(category)?;
    let size = run.config.size;
    let det = Detector::new(&run.sd, &prompt, size, settings.clone())?;
    if outputs.iter().any(|o| o.draw >= shots.len().max(1)) {
        return Err(Error::invalid(
            "an output refers to a shot draw that was not given",
        ));
    }
    let need_ms = outputs.iter().any(|o| o.method.needs_ms());
    let need_shots = outputs.iter().any(|o| o.method.needs_shots());
    if need_shots && shots.is_empty() {
        return Err(Error::invalid("the methods asked for need normal shots"));
    }
    let banks: Vec<Shots> = if need_shots {
        shots
            .iter()
            .map(|s| det.shots(&s.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>()))
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let mut jobs: Vec<(&str, &crate::data::split::SplitEntry)> =
        split.eval_good.iter().map(|e| ("good", e)).collect();
    for (name, d) in &split.defects {
        jobs.extend(d.test.iter().map(|e| (name.as_str(), e)));
    }
    if jobs.is_empty() {
        return Err(Error::invalid(format!(
            "{}: the split has no evaluation images",
            split.dataset.display()
        )));
    }
    let jobs: Vec<_> = jobs
        .into_iter()
        .enumerate()
        .filter(|(i, _)| shard.owns(*i))
        .map(|(_, j)| j)
        .collect();
    let mut writers: Vec<PredictionWriter> = outputs
        .iter()
        .map(|o| PredictionWriter::create(&o.dir))
        .collect::<Result<_>>()?;
    let mut timings = Vec::with_capacity(jobs.len());
    let (t_all, mut inpaintings_all) = (Instant::now(), 0usize);
    // One image's maps (every draw and method), computed apart from the writing so that several
    // images run side by side, one per core; results are written in job order.
    let compute = |e: &crate::data::split::SplitEntry| -> Result<ImageMaps> {
        let t0 = Instant::now();
        let img = split.load_image(e)?;
        let ms = if need_ms {
            Some(det.multi_scale(&img)?)
        } else {
            None
        };
        let mut inpaintings = ms.as_ref().map_or(0, |m| m.inpaintings);
        let draws = if need_shots { banks.len() } else { 1 };
        let mut per_draw = Vec::new();
        for d in 0..draws {
            let wanted: Vec<Method> = outputs
                .iter()
                .filter(|o| o.draw == d)
                .map(|o| o.method)
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let (maps, n) = maps_for(&det, &wanted, ms.as_ref(), banks.get(d), &img)?;
            inpaintings += n;
            per_draw.push((d, maps));
        }
        Ok(ImageMaps {
            hw: (img.height() as usize, img.width() as usize),
            normal: ms.map(|m| m.normal),
            per_draw,
            inpaintings,
            secs: t0.elapsed().as_secs_f64(),
        })
    };
    let lanes = Lanes::new(run.sd.unet.config().side_by_side().min(jobs.len()))
        .map_err(|er| Error::invalid(format!("starting detection threads: {er}")))?;
    let mut done = 0;
    for group in jobs.chunks(lanes.len()) {
        let computed = lanes.map(group.len(), |i| compute(group[i].1));
        for ((defect, e), r) in group.iter().zip(computed) {
            let r = r?;
            let (h, w) = r.hw;
            if let Some(normal) = &r.normal {
                for o in outputs {
                    if let Some(nd) = &o.normal_dir {
                        let p = nd.join(defect).join(format!("{}.png", e.stem));
                        if let Some(parent) = p.parent() {
                            std::fs::create_dir_all(parent).map_err(|er| Error::io(parent, er))?;
                        }
                        crate::io::image::save_png(&p, normal)?;
                    }
                }
            }
            for (d, maps) in r.per_draw {
                for (m, map) in maps {
                    let score = m.image_score(settings, &map);
                    for (o, wtr) in outputs.iter().zip(writers.iter_mut()) {
                        if o.draw == d && o.method == m {
                            wtr.write(defect, &e.stem, &to_original(&map, size, h, w)?, score)?;
                        }
                    }
                }
            }
            inpaintings_all += r.inpaintings;
            timings.push(ImageTiming {
                defect: defect.to_string(),
                stem: e.stem.clone(),
                secs: r.secs,
                inpaintings: r.inpaintings,
            });
            done += 1;
            progress(done, jobs.len(), r.secs);
        }
    }
    let total = t_all.elapsed().as_secs_f64();
    let summary = DetectSummary {
        prompt,
        settings: settings.clone(),
        shots: shots
            .iter()
            .map(|s| s.iter().map(|(p, _)| p.clone()).collect())
            .collect(),
        images: jobs.len(),
        secs_per_image: total / jobs.len().max(1) as f64,
        inpaintings_per_sec: inpaintings_all as f64 / total.max(1e-9),
        timings,
    };
    for (o, wtr) in outputs.iter().zip(writers) {
        wtr.finish_as(&shard.file_name("scores", "csv"))?;
        write_json(&o.dir.join(shard.file_name("detect", "json")), &summary)?;
    }
    Ok(summary)
}

/// What [`detect_split_shard`] computes for one image before writing it.
struct ImageMaps {
    /// Original height and width.
    hw: (usize, usize),
    /// The multi-scale branch's "normal" image, when it ran.
    normal: Option<RgbImage>,
    /// Per shot draw: each method's map at model size.
    per_draw: Vec<(usize, Vec<MethodMap>)>,
    inpaintings: usize,
    secs: f64,
}

/// One image of the production-line form.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScoredImage {
    /// The image file.
    pub image: PathBuf,
    /// Its score.
    pub score: f32,
    /// The map (`.npy`, image size).
    pub map: PathBuf,
    /// The heat-map overlay PNG.
    pub overlay: PathBuf,
}

/// Production-line form: no split, no ground truth. Scores every image of `images` against the
/// normal images of `shots` and writes `out/<stem>.npy`, `out/<stem>_overlay.png` and
/// `out/scores.csv` sorted from most to least anomalous.
pub fn detect_folder(
    run: &DetectRun,
    category: &str,
    settings: &DetectSettings,
    shots: &Path,
    images: &Path,
    out: &Path,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Vec<ScoredImage>> {
    let prompt = run.prompt(category)?;
    let size = run.config.size;
    let det = Detector::new(&run.sd, &prompt, size, settings.clone())?;
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| crate::io::image::is_image_file(p))
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(Error::invalid(format!("{}: no images", dir.display())));
        }
        Ok(v)
    };
    let shot_imgs: Vec<RgbImage> = list(shots)?
        .iter()
        .map(|p| crate::io::image::load_rgb(p))
        .collect::<Result<_>>()?;
    let bank = det.shots(&shot_imgs)?;
    let files = list(images)?;
    // Maps are named by stem: two files with one stem (a.png, a.jpg) would overwrite each other.
    let mut seen = std::collections::BTreeMap::new();
    for p in &files {
        let stem = p.file_stem().map(|s| s.to_string_lossy().to_string());
        if let Some(prev) = seen.insert(stem, p) {
            return Err(Error::invalid(format!(
                "{} and {} have the same file stem; maps are named by stem, rename one",
                prev.display(),
                p.display()
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut scored = Vec::new();
    for (i, p) in files.iter().enumerate() {
        let t0 = Instant::now();
        let img = crate::io::image::load_rgb(p)?;
        let (h, w) = (img.height() as usize, img.width() as usize);
        let ms = det.multi_scale(&img)?;
        let (maps, _) = maps_for(&det, &[Method::AnomalySd], Some(&ms), Some(&bank), &img)?;
        let map = &maps[0].1;
        let score = settings.score.of(map);
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| format!("image{i}"));
        let full = to_original(map, size, h, w)?;
        let map_path = out.join(format!("{stem}.npy"));
        crate::eval::npy::write(&map_path, &full)?;
        let hi = full.data.iter().cloned().fold(f32::MIN, f32::max).max(1e-6);
        let over =
            crate::eval::report::overlay(&img, &crate::eval::report::heat(&full, 0.0, hi), 0.5);
        let overlay = out.join(format!("{stem}_overlay.png"));
        crate::io::image::save_png(&overlay, &over)?;
        scored.push(ScoredImage {
            image: p.clone(),
            score,
            map: map_path,
            overlay,
        });
        progress(i + 1, files.len(), t0.elapsed().as_secs_f64());
    }
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut csv = String::from("image,score\n");
    for s in &scored {
        // RFC 4180 quoting: paths may hold commas or quotes.
        let path = s.image.display().to_string().replace('"', "\"\"");
        csv.push_str(&format!("\"{path}\",{}\n", s.score));
    }
    crate::io::atomic::write_atomic(&out.join("scores.csv"), csv.as_bytes())?;
    Ok(scored)
}

/// Joins the `count` shards' `scores.shard-I-of-N.csv` of a prediction folder into `scores.csv`
/// (a missing shard, or an image scored twice, is an error naming the file); returns the number
/// of images.
pub fn merge_score_shards(dir: &Path, count: usize) -> Result<usize> {
    if count == 0 {
        return Err(Error::invalid(
            "--merge-shards needs the shard count (at least 1)",
        ));
    }
    let mut rows = std::collections::BTreeMap::new();
    for index in 0..count {
        let p = dir.join(Shard { index, count }.file_name("scores", "csv"));
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let key = line
                .rsplit_once(',')
                .map(|(k, _)| k.to_string())
                .unwrap_or_default();
            if rows.insert(key.clone(), line.to_string()).is_some() {
                return Err(Error::invalid(format!(
                    "{}: {key} is also in another shard",
                    p.display()
                )));
            }
        }
    }
    let mut csv = format!("{HEADER}\n");
    for line in rows.values() {
        csv.push_str(line);
        csv.push('\n');
    }
    crate::io::atomic::write_atomic(&dir.join(SCORES_FILE), csv.as_bytes())?;
    Ok(rows.len())
}
