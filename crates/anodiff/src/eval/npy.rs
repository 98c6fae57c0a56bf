//! Minimal `.npy` (NumPy format 1.0) reader/writer for 2-D float32 anomaly maps: the prediction
//! format detectors exchange with `anodiff eval` (`PRED/<defect>/<stem>.npy`, H×W).

use crate::error::{Error, Result};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A row-major H×W float32 map.
#[derive(Debug, Clone, PartialEq)]
pub struct Map2 {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width` values, row-major.
    pub data: Vec<f32>,
}

impl Map2 {
    /// A map from row-major `data`; its length must be `height * width`.
    pub fn new(height: usize, width: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != height * width {
            return Err(Error::invalid(format!(
                "map of {height}x{width} needs {} values, got {}",
                height * width,
                data.len()
            )));
        }
        Ok(Self {
            height,
            width,
            data,
        })
    }
}

/// Encodes a map as `.npy` bytes (`<f4`, C order).
pub fn encode(map: &Map2) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        map.height, map.width
    );
    // Header (magic + version + len + dict + padding + '\n') is padded to a multiple of 64.
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(unpadded + pad + map.data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    for v in &map.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a map atomically.
pub fn write(path: &Path, map: &Map2) -> Result<()> {
    crate::io::atomic::write_atomic(path, &encode(map))
}

/// Reads a 2-D float32 (`<f4`) or float64 (`<f8`, converted) C-order map.
pub fn read(path: &Path) -> Result<Map2> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes).map_err(|msg| Error::Image {
        path: path.to_path_buf(),
        msg: format!("not a valid 2-D float .npy file: {msg}"),
    })
}

/// Decodes `.npy` bytes; the error is a plain message (the caller adds the file name).
pub fn decode(bytes: &[u8]) -> std::result::Result<Map2, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing NumPy magic".into());
    }
    let (major, hdr_start, hdr_len) = match bytes[6] {
        1 => (1, 10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
            (bytes[6], 12, n)
        }
        v => return Err(format!("unsupported format version {v}")),
    };
    let _ = major;
    let body_start = hdr_start + hdr_len;
    if bytes.len() < body_start {
        return Err("truncated header".into());
    }
    let header = std::str::from_utf8(&bytes[hdr_start..body_start])
        .map_err(|_| "header is not text".to_string())?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let elem = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "<f4" | "f4" | "float32" => 4,
        "<f8" | "f8" | "float64" => 8,
        d => return Err(format!("dtype {d} (expected little-endian float32 '<f4')")),
    };
    if dict_value(header, "fortran_order").map(|v| v.trim()) == Some("True") {
        return Err("Fortran-order arrays are not supported (save a C-order array)".into());
    }
    let shape = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape {shape}")))
        .collect::<std::result::Result<_, _>>()?;
    let (h, w) = match dims.as_slice() {
        [h, w] => (*h, *w),
        [1, h, w] => (*h, *w),
        _ => return Err(format!("shape {shape}: expected a 2-D H×W array")),
    };
    let body = &bytes[body_start..];
    if body.len() != h * w * elem {
        return Err(format!(
            "data has {} bytes, shape ({h}, {w}) needs {}",
            body.len(),
            h * w * elem
        ));
    }
    let data = if elem == 4 {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        body.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect()
    };
    Ok(Map2 {
        height: h,
        width: w,
        data,
    })
}

/// The raw text of `key`'s value in a Python dict literal (values here never contain `:`
/// at top level except inside the shape tuple, which has no colon).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(dict: &str, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&((dict.len() + 1) as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b.push(b'\n');
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn roundtrip_and_header_alignment() {
        let m = Map2::new(3, 5, (0..15).map(|i| i as f32 * 0.5 - 2.0).collect()).unwrap();
        let b = encode(&m);
        let hdr_len = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hdr_len) % 64, 0);
        assert_eq!(decode(&b).unwrap(), m);
    }

    #[test]
    fn rejects_bad_files() {
        let m = Map2::new(2, 2, vec![1.0; 4]).unwrap();
        let mut b = encode(&m);
        b.pop();
        assert!(decode(&b).unwrap_err().contains("bytes"));
        assert!(decode(b"not npy at all").is_err());
        let body = [0u8; 16];
        let i4 = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }";
        assert!(decode(&with_header(i4, &body)).unwrap_err().contains("<i4"));
        let d3 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 1), }";
        assert!(decode(&with_header(d3, &body)).unwrap_err().contains("2-D"));
        let f = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }";
        assert!(decode(&with_header(f, &body))
            .unwrap_err()
            .contains("Fortran"));
        let ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
        assert_eq!(decode(&with_header(ok, &body)).unwrap().data, vec![0.0; 4]);
    }

    #[test]
    fn reads_float64() {
        let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }";
        let mut body = 1.5f64.to_le_bytes().to_vec();
        body.extend_from_slice(&(-2.0f64).to_le_bytes());
        assert_eq!(
            decode(&with_header(dict, &body)).unwrap().data,
            vec![1.5, -2.0]
        );
    }
}
