//! The training log: one JSON object per update appended to a `.jsonl` file, written with a
//! single `write` per line and flushed, so a crash loses at most the line being written. Also
//! the reader of its (step, loss) pairs for reports, and the peak resident memory reported with it.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An append-only JSON-lines log.
pub struct JsonLog {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonLog {
    /// Opens `path` for appending (created if missing; a resumed run continues the same file).
    pub fn append(path: &Path) -> Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line and flushes.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// (step, loss) of every line of a trainer's JSON-lines log.
pub fn read_loss_log(path: &Path) -> Result<Vec<(usize, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::config(path, format!("line {}: {e}", i + 1)))?;
        if let (Some(s), Some(l)) = (v["step"].as_u64(), v["loss"].as_f64()) {
            out.push((s as usize, l));
        }
    }
    Ok(out)
}

/// Peak resident set size of this process (`VmHWM` in /proc/self/status), when the OS has it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
