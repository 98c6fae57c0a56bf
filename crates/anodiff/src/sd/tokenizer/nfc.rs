//! Unicode NFC (canonical composition), the first normalizer of the CLIP tokenizer. Written here
//! because the crate has no normalization dependency; the tables are generated from Python's
//! `unicodedata` (Unicode 14, the version the `tokenizers` library agrees with on every code point).

use std::collections::HashMap;
use std::sync::OnceLock;

use super::nfc_tables::{COMBINING_CLASSES, DECOMPOSITIONS};

// Hangul syllables are composed/decomposed arithmetically (Unicode ch. 3.12).
const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

fn combining_class(c: char) -> u8 {
    let cp = c as u32;
    match COMBINING_CLASSES.binary_search_by(|&(lo, hi, _)| {
        if hi < cp {
            std::cmp::Ordering::Less
        } else if lo > cp {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => COMBINING_CLASSES[i].2,
        Err(_) => 0,
    }
}

fn decompose_into(c: char, out: &mut Vec<char>) {
    let cp = c as u32;
    if (S_BASE..S_BASE + S_COUNT).contains(&cp) {
        let s = cp - S_BASE;
        let push = |v: u32, out: &mut Vec<char>| out.extend(char::from_u32(v));
        push(L_BASE + s / N_COUNT, out);
        push(V_BASE + (s % N_COUNT) / T_COUNT, out);
        if !s.is_multiple_of(T_COUNT) {
            push(T_BASE + s % T_COUNT, out);
        }
        return;
    }
    match DECOMPOSITIONS.binary_search_by_key(&cp, |e| e.0) {
        Ok(i) => {
            let (_, first, second, _) = DECOMPOSITIONS[i];
            // The table holds one step; recurse for the full canonical decomposition.
            for part in [first, second] {
                if let Some(p) = char::from_u32(part).filter(|_| part != 0) {
                    decompose_into(p, out);
                }
            }
        }
        Err(_) => out.push(c),
    }
}

fn compositions() -> &'static HashMap<(char, char), char> {
    static MAP: OnceLock<HashMap<(char, char), char>> = OnceLock::new();
    MAP.get_or_init(|| {
        DECOMPOSITIONS
            .iter()
            .filter(|e| e.3 == 1)
            .filter_map(|&(c, a, b, _)| {
                Some(((char::from_u32(a)?, char::from_u32(b)?), char::from_u32(c)?))
            })
            .collect()
    })
}

fn compose_pair(a: char, b: char) -> Option<char> {
    let (a32, b32) = (a as u32, b as u32);
    if (L_BASE..L_BASE + L_COUNT).contains(&a32) && (V_BASE..V_BASE + V_COUNT).contains(&b32) {
        let s = S_BASE + ((a32 - L_BASE) * V_COUNT + (b32 - V_BASE)) * T_COUNT;
        return char::from_u32(s);
    }
    if (S_BASE..S_BASE + S_COUNT).contains(&a32)
        && (a32 - S_BASE).is_multiple_of(T_COUNT)
        && (T_BASE + 1..T_BASE + T_COUNT).contains(&b32)
    {
        return char::from_u32(a32 + (b32 - T_BASE));
    }
    compositions().get(&(a, b)).copied()
}

/// Canonical decomposition, canonical ordering of combining marks, then canonical composition.
pub(super) fn nfc(text: &str) -> String {
    // Fast path: ASCII is always in NFC.
    if text.is_ascii() {
        return text.to_string();
    }
    let mut chars = Vec::with_capacity(text.len());
    for c in text.chars() {
        decompose_into(c, &mut chars);
    }
    // Stable-sort every run of non-starters by combining class.
    let mut i = 0;
    while i < chars.len() {
        if combining_class(chars[i]) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && combining_class(chars[i]) != 0 {
            i += 1;
        }
        chars[start..i].sort_by_key(|&c| combining_class(c));
    }
    // Compose: a mark joins the last starter unless a mark of equal/higher class sits between.
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut starter: Option<usize> = None;
    let mut last_class: Option<u8> = None; // class of the last char kept after the starter
    for c in chars {
        let class = combining_class(c);
        if let Some(s) = starter {
            let unblocked = match last_class {
                None => true,
                Some(prev) => prev != 0 && prev < class,
            };
            if unblocked {
                if let Some(composite) = compose_pair(out[s], c) {
                    out[s] = composite;
                    continue;
                }
            }
        }
        if class == 0 {
            starter = Some(out.len());
            last_class = None;
        } else {
            last_class = Some(class);
        }
        out.push(c);
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::nfc;

    #[test]
    fn composes_and_reorders() {
        assert_eq!(nfc("cafe\u{301}"), "caf\u{e9}");
        assert_eq!(nfc("\u{212b}"), "\u{c5}"); // singleton decomposition
        assert_eq!(nfc("a\u{316}\u{301}"), "\u{e1}\u{316}");
        assert_eq!(nfc("a\u{301}\u{316}"), "\u{e1}\u{316}");
        assert_eq!(nfc("\u{1100}\u{1161}\u{11a8}"), "\u{ac01}");
        assert_eq!(nfc("\u{ac01}"), "\u{ac01}");
        assert_eq!(nfc("\u{301}x"), "\u{301}x"); // leading mark, nothing to join
        assert_eq!(nfc(""), "");
    }
}
