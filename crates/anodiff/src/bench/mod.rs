//! Benchmarks behind `anodiff bench`: random weights, no files, median milliseconds and peak RSS,
//! with the same JSON keys as `tools/bench_reference.py` so the two can be compared side by side.

pub mod dual;
pub mod inpaint;
pub mod ops;
pub mod small;
pub mod unet;

/// Median of `times` (sorted in place); NaN when empty.
pub fn median_ms(times: &mut [f64]) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in MiB (0 where /proc is unavailable).
pub fn peak_rss_mb() -> f64 {
    crate::train::peak_rss_bytes().map_or(0.0, |b| b as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_rss() {
        assert_eq!(median_ms(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_ms(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median_ms(&mut []).is_nan());
        assert!(peak_rss_mb() > 1.0);
    }
}
