//! Byte-level BPE: the GPT-2/CLIP byte-to-unicode table and merging a word's symbols by merge rank.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Marks the last symbol of every word (CLIP's end-of-word suffix).
pub(super) const END_OF_WORD: &str = "</w>";

/// Byte -> printable char, as CLIP/GPT-2 build it: printable latin-1 bytes map to themselves, the
/// others (controls, space, 0x7F-0xA0, 0xAD) to U+0100 upwards in byte order.
pub(super) fn byte_to_unicode() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let cp = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        // Every value is below U+0200, so from_u32 never fails.
        *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

/// The vocabulary-order listing of the 256 byte symbols (printable ones first), as in vocab.json.
#[cfg(test)]
pub(super) fn byte_symbols_in_vocab_order() -> Vec<char> {
    let table = byte_to_unicode();
    let mut printable: Vec<char> = table
        .iter()
        .copied()
        .filter(|&c| (c as u32) < 256)
        .collect();
    printable.extend(table.iter().copied().filter(|&c| (c as u32) >= 256));
    printable
}

/// A merges table keyed by the two symbol ids: (rank, merged id).
pub(super) type Merges = HashMap<(u32, u32), (u32, u32)>;

/// Splits `word` (already byte-mapped) into chars, appends `</w>` to the last, looks them up
/// (unknown symbols become `unk`, or are dropped if there is none), then repeatedly merges the
/// lowest-rank adjacent pair, leftmost first.
pub(super) fn bpe_word(
    word: &str,
    vocab: &HashMap<String, u32>,
    merges: &Merges,
    unk: Option<u32>,
    out: &mut Vec<u32>,
) {
    let n = word.chars().count();
    let mut ids: Vec<u32> = Vec::with_capacity(n);
    let mut buf = String::new();
    for (i, c) in word.chars().enumerate() {
        buf.clear();
        buf.push(c);
        if i + 1 == n {
            buf.push_str(END_OF_WORD);
        }
        if let Some(id) = vocab.get(buf.as_str()).copied().or(unk) {
            ids.push(id);
        }
    }
    out.extend(merge_symbols(ids, merges));
}

/// Heap-driven merging (O(n log n)), equivalent to "merge the leftmost lowest-rank pair" repeated.
fn merge_symbols(ids: Vec<u32>, merges: &Merges) -> Vec<u32> {
    if ids.len() < 2 {
        return ids;
    }
    let len = ids.len();
    let mut sym = ids;
    let mut alive = vec![true; len];
    let mut prev: Vec<Option<usize>> = (0..len).map(|i| i.checked_sub(1)).collect();
    let mut next: Vec<Option<usize>> = (0..len).map(|i| (i + 1 < len).then_some(i + 1)).collect();
    // Entries: (rank, left position, expected merged id); stale ones are skipped on pop.
    let mut heap = BinaryHeap::new();
    for i in 0..len - 1 {
        if let Some(&(rank, new_id)) = merges.get(&(sym[i], sym[i + 1])) {
            heap.push(Reverse((rank, i, new_id)));
        }
    }
    while let Some(Reverse((_, pos, new_id))) = heap.pop() {
        let Some(right) = next[pos].filter(|_| alive[pos]) else {
            continue;
        };
        if merges.get(&(sym[pos], sym[right])).map(|m| m.1) != Some(new_id) {
            continue;
        }
        sym[pos] = new_id;
        alive[right] = false;
        next[pos] = next[right];
        if let Some(after) = next[right] {
            prev[after] = Some(pos);
        }
        if let Some(before) = prev[pos] {
            if let Some(&(rank, id)) = merges.get(&(sym[before], sym[pos])) {
                heap.push(Reverse((rank, before, id)));
            }
        }
        if let Some(after) = next[pos] {
            if let Some(&(rank, id)) = merges.get(&(sym[pos], sym[after])) {
                heap.push(Reverse((rank, pos, id)));
            }
        }
    }
    (0..len).filter(|&i| alive[i]).map(|i| sym[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_clip() {
        let t = byte_to_unicode();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xE9], '\u{e9}');
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[b' ' as usize], '\u{120}'); // GPT-2's well-known 'Ġ'
        assert_eq!(t[b'\n' as usize], '\u{10a}');
        assert_eq!(t[0x7F], '\u{121}');
        assert_eq!(t[0xAD], '\u{143}');
        let mut seen: Vec<char> = t.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256, "the table must be a bijection");
        let order = byte_symbols_in_vocab_order();
        assert_eq!(
            (order[0], order[93], order[187], order[188]),
            ('!', '~', '\u{ff}', '\u{100}')
        );
    }

    fn toy() -> (HashMap<String, u32>, Merges) {
        let tokens = [
            "a", "b", "c", "a</w>", "b</w>", "c</w>", "ab", "bc</w>", "abc</w>", "aa",
        ];
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let id = |s: &str| vocab[s];
        let mut merges = Merges::new();
        for (rank, (l, r)) in [("a", "b"), ("b", "c</w>"), ("ab", "c</w>"), ("a", "a")]
            .into_iter()
            .enumerate()
        {
            merges.insert((id(l), id(r)), (rank as u32, id(&format!("{l}{r}"))));
        }
        (vocab, merges)
    }

    fn run(word: &str) -> Vec<u32> {
        let (vocab, merges) = toy();
        let mut out = Vec::new();
        bpe_word(word, &vocab, &merges, Some(99), &mut out);
        out
    }

    #[test]
    fn bpe_merges_by_rank() {
        // "abc": a+b (rank 0) beats b+c</w> (rank 1), then ab+c</w> -> abc</w>.
        assert_eq!(run("abc"), vec![8]);
        // "bc": only b+c</w>.
        assert_eq!(run("bc"), vec![7]);
        // "aaa": a+a merges leftmost first, leaving a</w> alone.
        assert_eq!(run("aaa"), vec![9, 3]);
        // Unknown symbol -> unk, and it blocks merges across it.
        assert_eq!(run("axb"), vec![0, 99, 4]);
        assert_eq!(run(""), Vec::<u32>::new());
        assert_eq!(run("c"), vec![5]);
    }
}
