//! The prediction format every detector writes and `anodiff eval` reads:
//!
//! - `PRED/<defect>/<stem>.npy`: float32 H×W anomaly map, the size of the ORIGINAL image
//!   (defect-free evaluation images use the defect name `good`);
//! - `PRED/scores.csv`: header `defect,stem,score`, one image score per line.

use super::npy::{self, Map2};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Image-score file inside a prediction folder.
pub const SCORES_FILE: &str = "scores.csv";
/// First line of [`SCORES_FILE`].
pub const HEADER: &str = "defect,stem,score";

/// Names become path components and CSV fields: no separators, no dots-only names.
fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s == "." || s == ".." || s.contains(['/', '\\', ',', '\n', '\r', '"']) {
        return Err(Error::invalid(format!(
            "prediction {what} {s:?} cannot be used as a file name / CSV field"
        )));
    }
    Ok(())
}

/// Path of one map inside a prediction folder.
pub fn map_path(dir: &Path, defect: &str, stem: &str) -> PathBuf {
    dir.join(defect).join(format!("{stem}.npy"))
}

/// Writes maps as they come and `scores.csv` at the end.
#[derive(Debug)]
pub struct PredictionWriter {
    dir: PathBuf,
    scores: BTreeMap<(String, String), f32>,
}

impl PredictionWriter {
    /// Creates `dir` (and parents) to write into.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            scores: BTreeMap::new(),
        })
    }

    /// Writes `<dir>/<defect>/<stem>.npy` atomically and records the image score.
    pub fn write(&mut self, defect: &str, stem: &str, map: &Map2, score: f32) -> Result<()> {
        check_name("defect", defect)?;
        check_name("stem", stem)?;
        let path = map_path(&self.dir, defect, stem);
        if score.is_nan() {
            return Err(Error::invalid(format!(
                "{}: image score is NaN",
                path.display()
            )));
        }
        let key = (defect.to_string(), stem.to_string());
        if self.scores.contains_key(&key) {
            return Err(Error::invalid(format!("{}: written twice", path.display())));
        }
        npy::write(&path, map)?;
        self.scores.insert(key, score);
        Ok(())
    }

    /// Writes `scores.csv` atomically (sorted by defect, then stem).
    pub fn finish(self) -> Result<()> {
        self.finish_as(SCORES_FILE)
    }

    /// [`Self::finish`] under another file name (a shard's part of `scores.csv`).
    pub fn finish_as(self, name: &str) -> Result<()> {
        let mut csv = String::from(HEADER);
        csv.push('\n');
        for ((d, s), v) in &self.scores {
            csv.push_str(&format!("{d},{s},{v}\n"));
        }
        crate::io::atomic::write_atomic(&self.dir.join(name), csv.as_bytes())
    }
}

/// A prediction folder opened for evaluation.
#[derive(Debug, Clone)]
pub struct Predictions {
    dir: PathBuf,
    scores: BTreeMap<(String, String), f32>,
}

impl Predictions {
    /// Reads and checks `<dir>/scores.csv`; errors name the file and line.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(SCORES_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let bad = |line: usize, msg: String| Error::config(&path, format!("line {line}: {msg}"));
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, h)) if h.trim().trim_start_matches('\u{feff}') == HEADER => {}
            Some((_, h)) => return Err(bad(1, format!("header {h:?}, expected {HEADER:?}"))),
            None => return Err(bad(1, format!("empty file, expected header {HEADER:?}"))),
        }
        let mut scores = BTreeMap::new();
        for (i, line) in lines {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [d, s, v] = f[..] else {
                return Err(bad(
                    n,
                    format!("{} fields, expected 3 (defect,stem,score)", f.len()),
                ));
            };
            if d.is_empty() || s.is_empty() {
                return Err(bad(n, "empty defect or stem".into()));
            }
            let score: f32 = v
                .parse()
                .map_err(|_| bad(n, format!("score {v:?} is not a number")))?;
            if score.is_nan() {
                return Err(bad(n, "score is NaN".into()));
            }
            if scores
                .insert((d.to_string(), s.to_string()), score)
                .is_some()
            {
                return Err(bad(n, format!("{d}/{s} listed twice")));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            scores,
        })
    }

    /// The prediction folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image score, if `scores.csv` lists the image.
    pub fn score(&self, defect: &str, stem: &str) -> Option<f32> {
        self.scores
            .get(&(defect.to_string(), stem.to_string()))
            .copied()
    }

    /// Path of an image's anomaly map.
    pub fn map_path(&self, defect: &str, stem: &str) -> PathBuf {
        map_path(&self.dir, defect, stem)
    }

    /// Reads an image's anomaly map; a missing file is reported as a missing prediction.
    pub fn map(&self, defect: &str, stem: &str) -> Result<Map2> {
        let path = self.map_path(defect, stem);
        if !path.is_file() {
            return Err(Error::Image {
                path,
                msg: "missing prediction map (float32 H×W .npy expected)".into(),
            });
        }
        npy::read(&path)
    }

    /// Every (defect, stem) listed in `scores.csv`.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, f32)> {
        self.scores
            .iter()
            .map(|((d, s), v)| (d.as_str(), s.as_str(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("anodiff-pred-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn roundtrip() {
        let dir = tmp("rt");
        let map = Map2::new(2, 3, vec![0.5, -1.0, 2.0, 0.0, 1e-7, 3.25]).unwrap();
        let mut w = PredictionWriter::create(&dir).unwrap();
        w.write("crack", "000", &map, 0.123_456_79).unwrap();
        w.write("good", "001", &map, -2.5).unwrap();
        assert!(w.write("good", "001", &map, 1.0).is_err());
        assert!(w.write("a/b", "x", &map, 1.0).is_err());
        assert!(w.write("good", "x", &map, f32::NAN).is_err());
        w.finish().unwrap();
        let p = Predictions::open(&dir).unwrap();
        assert_eq!(p.score("crack", "000"), Some(0.123_456_79));
        assert_eq!(p.score("good", "001"), Some(-2.5));
        assert_eq!(p.score("good", "002"), None);
        assert_eq!(p.map("good", "001").unwrap(), map);
        let e = p.map("good", "002").unwrap_err().to_string();
        assert!(e.contains("002.npy") && e.contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn csv_errors_name_file_and_line() {
        let dir = tmp("csv");
        std::fs::create_dir_all(&dir).unwrap();
        for (text, want) in [
            ("defect,stem\n", "line 1"),
            ("defect,stem,score\ngood,000,0.5\ngood,001\n", "line 3"),
            ("defect,stem,score\ngood,000,abc\n", "line 2"),
            (
                "defect,stem,score\ngood,000,1\ngood,000,2\n",
                "listed twice",
            ),
            ("", "empty file"),
        ] {
            std::fs::write(dir.join(SCORES_FILE), text).unwrap();
            let e = Predictions::open(&dir).unwrap_err().to_string();
            assert!(e.contains("scores.csv") && e.contains(want), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
