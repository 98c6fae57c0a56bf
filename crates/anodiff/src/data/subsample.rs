//! Choosing a few items of a sorted list for display: evenly spaced rather than the first ones,
//! because a dataset's first files are often one capture run (MTD's first 126 images are its
//! darkest) and would misrepresent the rest.

/// Up to `k` items of `items`, evenly spaced from the first: item `i·n/k` for `i < min(k, n)`.
pub fn evenly_spaced<T: Clone>(items: &[T], k: usize) -> Vec<T> {
    let n = items.len();
    let take = k.min(n);
    (0..take).map(|i| items[i * n / take].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaced_capped_and_empty() {
        assert_eq!(evenly_spaced(&[0, 1, 2, 3, 4, 5], 3), vec![0, 2, 4]);
        assert_eq!(evenly_spaced(&[0, 1], 5), vec![0, 1]);
        assert!(evenly_spaced::<u8>(&[], 3).is_empty());
        assert!(evenly_spaced(&[1], 0).is_empty());
    }
}
