//! CLIP BPE tokenizer, token-for-token identical to `transformers.CLIPTokenizer` (5.x, the
//! `tokenizers`-backed one that diffusers' SD pipelines use) on a diffusers `tokenizer/` folder.
//!
//! Pipeline, in the library's order:
//! 1. special tokens are cut out of the raw text (the ones marked `normalized: false`);
//! 2. each remaining piece is normalized: NFC, every whitespace run -> one space, per-char lowercase;
//! 3. special tokens marked `normalized: true` are cut out of the normalized text;
//! 4. the CLIP regex keeps `<|startoftext|>`, `<|endoftext|>`, contractions, letter runs, single
//!    digits and runs of other non-space chars (whitespace is dropped);
//! 5. each piece is split again by GPT-2's byte-level regex (this only matters for a literal
//!    `<|endoftext|>` that was not taken as a special token: it becomes `<|`, `endoftext`, `|>`);
//! 6. bytes are mapped to printable chars, `</w>` ends the word, BPE merges by rank;
//! 7. `<|startoftext|>` + ids + `<|endoftext|>`, optionally truncated/padded to `model_max_length`.
//!
//! ftfy is not part of it: transformers 5 no longer has the slow tokenizer that used ftfy (or its
//! BasicTokenizer fallback), so neither is imitated.

mod bpe;
mod nfc;
mod nfc_tables;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use serde_json::Value;

use crate::io::json::read_json;
use crate::{Error, Result};
use bpe::{bpe_word, byte_to_unicode, Merges};

const EMBEDDED_VOCAB: &str = include_str!("../../assets/clip/vocab.json");
const EMBEDDED_MERGES: &str = include_str!("../../assets/clip/merges.txt");
const EMBEDDED_VOCAB_NAME: &str = "<built-in CLIP vocabulary>/vocab.json";
const EMBEDDED_MERGES_NAME: &str = "<built-in CLIP vocabulary>/merges.txt";
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// Stable Diffusion's text encoders have 77 positions.
const DEFAULT_MAX_LENGTH: usize = 77;

const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// GPT-2's byte-level split without its whitespace alternatives (pieces never contain whitespace).
const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

/// A special token as the tokenizer config describes it.
#[derive(Clone, Debug, PartialEq)]
struct SpecialToken {
    content: String,
    /// true: matched in the normalized text; false: matched in the raw text.
    normalized: bool,
}

impl SpecialToken {
    fn raw(content: &str) -> Self {
        SpecialToken {
            content: content.to_string(),
            normalized: false,
        }
    }

    /// A config value: either a plain string or an AddedToken object `{"content": ..., ...}`.
    fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Some(Self::raw(s)),
            Value::Object(o) => Some(SpecialToken {
                content: o.get("content")?.as_str()?.to_string(),
                normalized: o
                    .get("normalized")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }),
            _ => None,
        }
    }
}

/// The special-token names in the order transformers registers them (a later one wins when two
/// share the same text, e.g. SD-1's `pad_token` string overrides `eos_token`'s normalized flag).
const SPECIAL_KEYS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

/// CLIP's byte-level BPE tokenizer, built from `vocab.json` + `merges.txt` (+ the tokenizer config).
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    merges: Merges,
    byte_map: [char; 256],
    /// (text, id), cut out before / after normalization.
    raw_specials: Vec<(String, u32)>,
    normalized_specials: Vec<(String, u32)>,
    clip_split: Regex,
    byte_level_split: Regex,
    whitespace: Regex,
    bos: u32,
    eos: u32,
    pad: u32,
    unk: Option<u32>,
    max_length: usize,
    /// What it was built from, so [`ClipTokenizer::save`] writes an equivalent folder.
    files: SourceFiles,
}

/// The texts a tokenizer was built from (the built-in vocabulary is borrowed, not copied).
struct SourceFiles {
    vocab: Cow<'static, str>,
    merges: Cow<'static, str>,
    /// `tokenizer_config.json` / `special_tokens_map.json` as read; `None`: not in the folder.
    config: Option<Value>,
    special_tokens_map: Option<Value>,
}

impl ClipTokenizer {
    /// Loads `vocab.json` + `merges.txt` with SD-1 settings: pad = `<|endoftext|>`, 77 tokens.
    pub fn from_files(vocab: &Path, merges: &Path) -> Result<Self> {
        let specials: Vec<(&str, SpecialToken)> = SPECIAL_KEYS
            .iter()
            .map(|&k| {
                (
                    k,
                    SpecialToken::raw(if k == "bos_token" { BOS } else { EOS }),
                )
            })
            .collect();
        Self::build(
            vocab,
            merges,
            None,
            specials,
            &[],
            DEFAULT_MAX_LENGTH,
            vocab,
        )
    }

    /// The built-in vocabulary as file texts (`vocab.json`, `merges.txt`), e.g. to write a
    /// diffusers `tokenizer/` folder for a model trained with [`ClipTokenizer::embedded`].
    pub fn embedded_files() -> (&'static str, &'static str) {
        (EMBEDDED_VOCAB, EMBEDDED_MERGES)
    }

    /// The OpenAI CLIP vocabulary (the one SD-1.x and SD-2 ship) built into the library, with SD-1
    /// settings: presets trained from scratch and the offline demo need no tokenizer files.
    pub fn embedded() -> Result<Self> {
        let (vocab, merges) = (
            Path::new(EMBEDDED_VOCAB_NAME),
            Path::new(EMBEDDED_MERGES_NAME),
        );
        let specials = SPECIAL_KEYS
            .iter()
            .map(|&k| {
                (
                    k,
                    SpecialToken::raw(if k == "bos_token" { BOS } else { EOS }),
                )
            })
            .collect();
        let texts = Some((EMBEDDED_VOCAB, EMBEDDED_MERGES));
        Self::build(
            vocab,
            merges,
            texts,
            specials,
            &[],
            DEFAULT_MAX_LENGTH,
            vocab,
        )
    }

    /// Loads a diffusers `tokenizer/` folder: `vocab.json`, `merges.txt`, and (when present)
    /// `tokenizer_config.json` / `special_tokens_map.json` for the special tokens and max length.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let map_path = dir.join("special_tokens_map.json");
        let cfg_file = read_json_if_exists(&cfg_path)?;
        let map_file = read_json_if_exists(&map_path)?;
        let cfg = cfg_file.clone().unwrap_or(Value::Null);
        let mut specials: Vec<(&str, SpecialToken)> = SPECIAL_KEYS
            .iter()
            .map(|&k| {
                let default = SpecialToken::raw(if k == "bos_token" { BOS } else { EOS });
                let tok = cfg.get(k).and_then(SpecialToken::from_json);
                (k, tok.unwrap_or(default))
            })
            .collect();

        // Newer configs list every added token; transformers then ignores special_tokens_map.json.
        let mut extra: Vec<(SpecialToken, u32)> = Vec::new();
        if let Some(decoder) = cfg.get("added_tokens_decoder").and_then(Value::as_object) {
            for (id, v) in decoder {
                let tok = SpecialToken::from_json(v).ok_or_else(|| {
                    Error::config(
                        &cfg_path,
                        format!("added_tokens_decoder[{id}] is not a token"),
                    )
                })?;
                let id: u32 = id.parse().map_err(|_| {
                    Error::config(
                        &cfg_path,
                        format!("added_tokens_decoder key `{id}` is not an id"),
                    )
                })?;
                extra.push((tok, id));
            }
            for (_, tok) in specials.iter_mut() {
                if let Some((t, _)) = extra.iter().find(|(t, _)| t.content == tok.content) {
                    *tok = t.clone();
                }
            }
        } else if let Some(map) = &map_file {
            for (key, tok) in specials.iter_mut() {
                if let Some(t) = map.get(*key).and_then(SpecialToken::from_json) {
                    *tok = t;
                }
            }
        }

        let max_length = match cfg.get("model_max_length").and_then(Value::as_f64) {
            None => DEFAULT_MAX_LENGTH,
            Some(n) if (2.0..=1e6).contains(&n) && n.fract() == 0.0 => n as usize,
            Some(n) => {
                // transformers writes 1e30 for "unbounded"; CLIP has 77 positions regardless.
                tracing::warn!(
                    "{}: model_max_length {n} unusable, using {DEFAULT_MAX_LENGTH}",
                    cfg_path.display()
                );
                DEFAULT_MAX_LENGTH
            }
        };
        let mut tok = Self::build(
            &dir.join("vocab.json"),
            &dir.join("merges.txt"),
            None,
            specials,
            &extra,
            max_length,
            &cfg_path,
        )?;
        tok.files.config = cfg_file;
        tok.files.special_tokens_map = map_file;
        Ok(tok)
    }

    /// Writes a diffusers `tokenizer/` folder that [`ClipTokenizer::from_dir`] (and transformers'
    /// `CLIPTokenizer`) read back as this tokenizer: `vocab.json` and `merges.txt` as they were
    /// read, the folder's own `tokenizer_config.json` / `special_tokens_map.json` when it was
    /// loaded from one, else a `tokenizer_config.json` with the SD-1 settings
    /// [`ClipTokenizer::from_files`] uses. Every file is written atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let write = |name: &str, text: &str| {
            crate::io::atomic::write_atomic(&dir.join(name), text.as_bytes())
        };
        let json = |name: &str, v: &Value| crate::io::json::write_json(&dir.join(name), v);
        write("vocab.json", &self.files.vocab)?;
        write("merges.txt", &self.files.merges)?;
        match &self.files.config {
            Some(cfg) => json("tokenizer_config.json", cfg)?,
            None => json(
                "tokenizer_config.json",
                &serde_json::json!({
                    "tokenizer_class": "CLIPTokenizer",
                    "model_max_length": self.max_length,
                    "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS,
                }),
            )?,
        }
        if let Some(map) = &self.files.special_tokens_map {
            json("special_tokens_map.json", map)?;
        }
        Ok(())
    }

    fn build(
        vocab_path: &Path,
        merges_path: &Path,
        texts: Option<(&'static str, &'static str)>,
        specials: Vec<(&str, SpecialToken)>,
        extra: &[(SpecialToken, u32)],
        max_length: usize,
        config_path: &Path,
    ) -> Result<Self> {
        let vocab_text = read_text(vocab_path, texts.map(|t| t.0))?;
        let merges_text = read_text(merges_path, texts.map(|t| t.1))?;
        let vocab = read_vocab(vocab_path, &vocab_text)?;
        let merges = read_merges(merges_path, &merges_text, &vocab)?;

        // content -> (id, normalized); later registrations override earlier ones.
        let mut registered: Vec<(String, u32, bool)> = Vec::new();
        let mut register = |tok: &SpecialToken, id: u32| {
            registered.retain(|(c, _, _)| *c != tok.content);
            registered.push((tok.content.clone(), id, tok.normalized));
        };
        for (tok, id) in extra {
            register(tok, vocab.get(&tok.content).copied().unwrap_or(*id));
        }
        let mut ids = HashMap::new();
        for (key, tok) in &specials {
            let id = vocab
                .get(&tok.content)
                .copied()
                .or_else(|| {
                    extra
                        .iter()
                        .find(|(t, _)| t.content == tok.content)
                        .map(|e| e.1)
                })
                .ok_or_else(|| {
                    Error::config(
                        config_path,
                        format!("{key} `{}` is not in {}", tok.content, vocab_path.display()),
                    )
                })?;
            register(tok, id);
            ids.insert(*key, id);
        }
        let (raw_specials, normalized_specials) = registered
            .into_iter()
            .filter(|(c, _, _)| !c.is_empty())
            .partition::<Vec<_>, _>(|(_, _, normalized)| !normalized);
        let strip = |v: Vec<(String, u32, bool)>| v.into_iter().map(|(c, i, _)| (c, i)).collect();

        let regex =
            |p: &str| Regex::new(p).map_err(|e| Error::invalid(format!("tokenizer regex: {e}")));
        Ok(ClipTokenizer {
            vocab,
            merges,
            byte_map: byte_to_unicode(),
            raw_specials: strip(raw_specials),
            normalized_specials: strip(normalized_specials),
            clip_split: regex(CLIP_PATTERN)?,
            byte_level_split: regex(BYTE_LEVEL_PATTERN)?,
            whitespace: regex(r"\s+")?,
            bos: ids["bos_token"],
            eos: ids["eos_token"],
            pad: ids["pad_token"],
            unk: Some(ids["unk_token"]),
            max_length,
            files: SourceFiles {
                vocab: vocab_text,
                merges: merges_text,
                config: None,
                special_tokens_map: None,
            },
        })
    }

    /// `<|startoftext|>` + tokens + `<|endoftext|>`, cut to `max_length` (the end token kept) and
    /// padded with the pad id: what SD pipelines feed the text encoder.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        let body = self.tokens(text);
        ids.extend(body.iter().take(self.max_length - 2));
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }

    /// `<|startoftext|>` + tokens + `<|endoftext|>` with no truncation or padding (for long prompts
    /// that are chunked later).
    pub fn encode_unpadded(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.bos];
        ids.extend(self.tokens(text));
        ids.push(self.eos);
        ids
    }

    /// Length every encoding is padded or truncated to (77 for SD).
    pub fn max_length(&self) -> usize {
        self.max_length
    }
    /// Id of the padding token.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }
    /// Id of `<|startoftext|>`.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }
    /// Id of `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }
    /// Number of entries in vocab.json (49408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The token ids of `text`, without start/end tokens.
    fn tokens(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for piece in split_specials(text, &self.raw_specials) {
            match piece {
                Piece::Special(id) => out.push(id),
                Piece::Text(raw) => {
                    let normalized = self.normalize(raw);
                    for piece in split_specials(&normalized, &self.normalized_specials) {
                        match piece {
                            Piece::Special(id) => out.push(id),
                            Piece::Text(t) => self.bpe_text(t, &mut out),
                        }
                    }
                }
            }
        }
        out
    }

    fn normalize(&self, text: &str) -> String {
        let composed = nfc::nfc(text);
        let spaced = self.whitespace.replace_all(&composed, " ");
        // Char by char, like the tokenizers library (no final-sigma rule of str::to_lowercase).
        spaced.chars().flat_map(char::to_lowercase).collect()
    }

    fn bpe_text(&self, text: &str, out: &mut Vec<u32>) {
        let mut word = String::new();
        for piece in self.clip_split.find_iter(text) {
            for sub in self.byte_level_split.find_iter(piece.as_str()) {
                word.clear();
                word.extend(sub.as_str().bytes().map(|b| self.byte_map[b as usize]));
                bpe_word(&word, &self.vocab, &self.merges, self.unk, out);
            }
        }
    }
}

enum Piece<'a> {
    Text(&'a str),
    Special(u32),
}

/// Cuts special tokens out of `text`: leftmost match first, the longest one at that position.
fn split_specials<'a>(text: &'a str, specials: &[(String, u32)]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut start = 0; // start of the pending text piece
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let hit = specials
            .iter()
            .filter(|(s, _)| rest.starts_with(s.as_str()))
            .max_by_key(|(s, _)| s.len());
        match hit {
            Some((s, id)) => {
                if start < pos {
                    pieces.push(Piece::Text(&text[start..pos]));
                }
                pieces.push(Piece::Special(*id));
                pos += s.len();
                start = pos;
            }
            None => pos += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        pieces.push(Piece::Text(&text[start..]));
    }
    pieces
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>> {
    path.exists().then(|| read_json(path)).transpose()
}

/// The file's text, or the given built-in text (`path` then only names it in errors).
fn read_text(path: &Path, builtin: Option<&'static str>) -> Result<Cow<'static, str>> {
    match builtin {
        Some(t) => Ok(Cow::Borrowed(t)),
        None => std::fs::read_to_string(path)
            .map(Cow::Owned)
            .map_err(|e| Error::io(path, e)),
    }
}

/// Parses `vocab.json`'s text (`path` names the file in errors).
fn read_vocab(path: &Path, text: &str) -> Result<HashMap<String, u32>> {
    let vocab: HashMap<String, u32> = serde_json::from_str(text)
        .map_err(|e| Error::config(path, format!("not a JSON object of token -> id: {e}")))?;
    if vocab.is_empty() {
        return Err(Error::config(path, "vocabulary is empty"));
    }
    Ok(vocab)
}

/// `#version` header lines are skipped; every other line is `left right`, ranked by order.
fn read_merges(path: &Path, text: &str, vocab: &HashMap<String, u32>) -> Result<Merges> {
    let mut merges = Merges::new();
    let mut rank = 0u32;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let line_no = i + 1;
        if line.starts_with("#version") || (line.is_empty() && i + 1 == lines.len()) {
            continue;
        }
        let parts: Vec<&str> = line.split(' ').collect();
        let [left, right] = parts[..] else {
            return Err(Error::config(
                path,
                format!("line {line_no}: expected two space-separated symbols, found `{line}`"),
            ));
        };
        let lookup = |s: &str| {
            vocab.get(s).copied().ok_or_else(|| {
                Error::config(
                    path,
                    format!("line {line_no}: `{s}` is not in the vocabulary"),
                )
            })
        };
        let merged = format!("{left}{right}");
        merges.insert((lookup(left)?, lookup(right)?), (rank, lookup(&merged)?));
        rank += 1;
    }
    Ok(merges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specials() -> Vec<(String, u32)> {
        vec![
            ("<|endoftext|>".into(), 7),
            ("!".into(), 0),
            ("!!x".into(), 9),
        ]
    }

    fn show(pieces: Vec<Piece>) -> Vec<String> {
        pieces
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => t.to_string(),
                Piece::Special(id) => format!("#{id}"),
            })
            .collect()
    }

    #[test]
    fn special_tokens_are_cut_leftmost_longest() {
        let s = specials();
        assert_eq!(
            show(split_specials("a<|endoftext|>b", &s)),
            ["a", "#7", "b"]
        );
        assert_eq!(show(split_specials("é!!x!", &s)), ["é", "#9", "#0"]);
        assert_eq!(show(split_specials("", &s)), Vec::<String>::new());
        assert_eq!(show(split_specials("<|endoftext", &s)), ["<|endoftext"]);
    }

    #[test]
    fn regexes_compile() {
        assert!(Regex::new(CLIP_PATTERN).is_ok());
        assert!(Regex::new(BYTE_LEVEL_PATTERN).is_ok());
    }
}
