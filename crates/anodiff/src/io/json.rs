//! JSON files: reading with errors that name the file, writing pretty-printed and atomically.

use super::atomic::write_atomic;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// Reads and parses a JSON file, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, format!("invalid JSON: {e}")))
}

/// Writes `value` as pretty-printed JSON, atomically (see [`write_atomic`]).
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::config(path, format!("cannot serialise as JSON: {e}")))?;
    // A final newline, as Python's json tools and diffusers' save_config write.
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("anodiff-json-{}", std::process::id()));
        let p = dir.join("a.json");
        write_json(&p, &serde_json::json!({"a": [1, 2]})).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains('\n'), "pretty-printed: {text}");
        let v: serde_json::Value = read_json(&p).unwrap();
        assert_eq!(v["a"][1], 2);
        std::fs::write(&p, b"{not json").unwrap();
        let e = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(e.contains("a.json") && e.contains("invalid JSON"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
