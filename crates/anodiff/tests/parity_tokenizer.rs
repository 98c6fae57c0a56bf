//! Parity of `ClipTokenizer` with transformers 5.23 `CLIPTokenizer` on the real CLIP vocabulary.
//! Tolerance: none — every token id must be equal. Fixtures: tools/parity/make_tokenizer_fixtures.py.

mod common;

use common::{assets, fixtures, temp_dir};
use std::path::PathBuf;

use anodiff::sd::tokenizer::ClipTokenizer;
use serde_json::Value;

/// The CLIP vocabulary lives with the library (it is embedded); the rest are test fixtures.
fn fixture(name: &str) -> PathBuf {
    match name {
        "vocab.json" | "merges.txt" => assets("clip").join(name),
        _ => fixtures("tokenizer").join(name),
    }
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture("cases.json")).expect("read cases.json");
    serde_json::from_str(&text).expect("parse cases.json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// A diffusers-style tokenizer folder: the shared vocab/merges plus one variant's config files,
/// in the temporary folder `name` — one per test: tests run in parallel, and `temp_dir` clears
/// its folder first (two tests sharing "sd2" once removed each other's files).
fn tokenizer_dir(variant: &str, name: &str) -> PathBuf {
    let dir = temp_dir(name);
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(fixture(f), dir.join(f)).expect("copy vocab");
    }
    for f in ["tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(fixture(variant).join(f), dir.join(f)).expect("copy config");
    }
    dir
}

/// Compares every case (padded and unpadded); prints and returns the number of mismatches.
fn check(tok: &ClipTokenizer, cases: &Value, label: &str) -> usize {
    let list = cases.as_array().expect("case list");
    let mut bad = 0;
    for case in list {
        let text = case["text"].as_str().expect("text");
        let (want_pad, want_raw) = (ids(&case["padded"]), ids(&case["unpadded"]));
        let (got_pad, got_raw) = (tok.encode(text), tok.encode_unpadded(text));
        if got_pad != want_pad || got_raw != want_raw {
            bad += 1;
            eprintln!("{label}: MISMATCH for {text:?}\n  want {want_raw:?}\n  got  {got_raw:?}");
        }
    }
    println!(
        "{label}: {bad} mismatching prompts of {} (tolerance 0)",
        list.len()
    );
    bad
}

#[test]
fn clip_vocab_matches_transformers() {
    let tok = ClipTokenizer::from_files(&fixture("vocab.json"), &fixture("merges.txt")).unwrap();
    let c = cases();
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!(tok.vocab_size() as u64, c["vocab_size"].as_u64().unwrap());
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (49406, 49407, 49407)
    );
    assert_eq!(tok.max_length(), 77);
    assert!(c["files"].as_array().unwrap().len() >= 60);
    assert_eq!(check(&tok, &c["files"], "from_files"), 0);
    // 150 random strings mixing specials, marks, CJK, Hangul jamo, emoji, controls, whitespace.
    assert_eq!(check(&tok, &c["random_files"], "from_files random"), 0);
}

#[test]
fn embedded_vocab_matches_transformers() {
    let tok = ClipTokenizer::embedded().unwrap();
    let c = cases();
    assert_eq!(
        (tok.vocab_size(), tok.pad_id(), tok.max_length()),
        (49408, 49407, 77)
    );
    assert_eq!(check(&tok, &c["files"], "embedded"), 0);
}

#[test]
fn sd1_folder_matches_transformers() {
    let dir = tokenizer_dir("sd1", "sd1");
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    assert_eq!((tok.pad_id(), tok.max_length()), (49407, 77));
    assert_eq!(check(&tok, &cases()["sd1_dir"], "sd1 folder"), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sd2_folder_pads_with_exclamation_mark() {
    let dir = tokenizer_dir("sd2", "sd2");
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    assert_eq!((tok.pad_id(), tok.max_length()), (0, 77));
    let padded = tok.encode("a photo");
    assert_eq!(padded.len(), 77);
    assert_eq!(&padded[padded.len() - 3..], &[0, 0, 0]);
    let c = cases();
    assert_eq!(check(&tok, &c["sd2_dir"], "sd2 folder"), 0);
    assert_eq!(check(&tok, &c["random_sd2_dir"], "sd2 folder random"), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn saved_tokenizers_load_back_identical() {
    let c = cases();
    // A folder with its own config files (SD-2 pads with "!"), and the built-in vocabulary.
    let src = tokenizer_dir("sd2", "saved_sd2_src");
    let sd2_out = temp_dir("saved_sd2");
    ClipTokenizer::from_dir(&src)
        .unwrap()
        .save(&sd2_out)
        .unwrap();
    let back = ClipTokenizer::from_dir(&sd2_out).unwrap();
    assert_eq!((back.pad_id(), back.max_length()), (0, 77));
    assert_eq!(check(&back, &c["sd2_dir"], "saved sd2 folder"), 0);
    assert_eq!(
        check(&back, &c["random_sd2_dir"], "saved sd2 folder random"),
        0
    );
    let out = temp_dir("saved_embedded");
    ClipTokenizer::embedded().unwrap().save(&out).unwrap();
    let back = ClipTokenizer::from_dir(&out).unwrap();
    assert_eq!((back.pad_id(), back.max_length()), (49407, 77));
    assert_eq!(check(&back, &c["files"], "saved embedded"), 0);
    for dir in [src, sd2_out, out] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn missing_vocab_names_the_file() {
    let dir = temp_dir("missing");
    std::fs::copy(fixture("merges.txt"), dir.join("merges.txt")).unwrap();
    let err = ClipTokenizer::from_dir(&dir)
        .err()
        .expect("must fail")
        .to_string();
    println!("{err}");
    assert!(err.contains("vocab.json"), "{err}");
    let err = ClipTokenizer::from_files(&dir.join("nope.json"), &dir.join("merges.txt"))
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("nope.json"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn corrupt_files_name_the_file_and_line() {
    let dir = temp_dir("corrupt");
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    std::fs::write(
        &vocab,
        r#"{"a": 0, "b": 1, "ab": 2, "b</w>": 3, "<|startoftext|>": 4, "<|endoftext|>": 5}"#,
    )
    .unwrap();

    std::fs::write(&merges, "#version: 0.2\na b\nab\n").unwrap();
    let err = ClipTokenizer::from_files(&vocab, &merges)
        .err()
        .expect("must fail")
        .to_string();
    println!("{err}");
    assert!(
        err.contains("merges.txt") && err.contains("line 3"),
        "{err}"
    );

    std::fs::write(&merges, "#version: 0.2\na b\nx y\n").unwrap();
    let err = ClipTokenizer::from_files(&vocab, &merges)
        .err()
        .expect("must fail")
        .to_string();
    println!("{err}");
    assert!(
        err.contains("merges.txt") && err.contains("line 3") && err.contains("`x`"),
        "{err}"
    );

    std::fs::write(&merges, "#version: 0.2\na b\n").unwrap();
    std::fs::write(&vocab, "[1, 2").unwrap();
    let err = ClipTokenizer::from_files(&vocab, &merges)
        .err()
        .expect("must fail")
        .to_string();
    println!("{err}");
    assert!(err.contains("vocab.json"), "{err}");

    // A toy vocabulary without the special tokens is rejected, naming what is missing.
    std::fs::write(&vocab, r#"{"a": 0, "b": 1, "ab": 2}"#).unwrap();
    let err = ClipTokenizer::from_files(&vocab, &merges)
        .err()
        .expect("must fail")
        .to_string();
    println!("{err}");
    assert!(err.contains("<|startoftext|>"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn never_panics_on_arbitrary_text() {
    let tok = ClipTokenizer::from_files(&fixture("vocab.json"), &fixture("merges.txt")).unwrap();
    // Deterministic pseudo-random strings over the whole code space (controls, marks, emoji...).
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let len = (next() % 60) as usize;
        let text: String = (0..len)
            .filter_map(|_| {
                let r = next();
                let cp = match r % 4 {
                    0 => (r >> 8) % 0x80,
                    1 => (r >> 8) % 0x3000,
                    _ => (r >> 8) % 0x110000,
                };
                char::from_u32(cp as u32)
            })
            .collect();
        let padded = tok.encode(&text);
        assert_eq!(padded.len(), 77);
        assert_eq!(padded[0], 49406);
        let raw = tok.encode_unpadded(&text);
        assert_eq!(raw.last(), Some(&49407));
        assert!(raw.iter().all(|&id| id < 49408));
    }
}
