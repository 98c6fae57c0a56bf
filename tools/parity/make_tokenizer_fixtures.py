"""Fixtures for the CLIP BPE tokenizer parity test (crates/anodiff/tests/parity_tokenizer.rs).

Regenerate (from the repository root):
    python tools/parity/make_tokenizer_fixtures.py

Versions used: transformers 5.23.0, tokenizers 0.23.3, open_clip_torch 3.3.0, Python 3.11
(unicodedata 14.0.0).

What it writes:
  crates/anodiff/assets/clip/vocab.json, merges.txt   the OpenAI CLIP BPE vocabulary, converted from
      open_clip's bpe_simple_vocab_16e6.txt.gz the way openai/clip-vit-large-patch14 was built:
      256 byte-level symbols, the same with "</w>", the joined merges, then <|startoftext|> and
      <|endoftext|> (49408 entries); merges.txt = "#version: 0.2" + lines 1..48894 of the gz file.
      vocab.json is written as UTF-8 JSON (not \\u-escaped): same content, smaller file.
  tests/fixtures/tokenizer/sd1/, sd2/   tokenizer_config.json + special_tokens_map.json shaped like
      the published SD-1.5 and SD-2 tokenizer folders (SD-2 pads with "!").
  tests/fixtures/tokenizer/cases.json   token ids from transformers.CLIPTokenizer for a prompt corpus.
  crates/anodiff/src/sd/tokenizer/nfc_tables.rs   Unicode 14 canonical decomposition / combining
      class tables, for the NFC normalizer the tokenizer runs first.

Which CLIPTokenizer: transformers 5.x only ships the tokenizers-backed CLIPTokenizer (there is no
slow/Python one any more, and ftfy is never consulted even though it is installed here). Its pipeline
is: split out special tokens, NFC, collapse \\s+ to one space, lower-case, CLIP regex split, GPT-2
byte-level split + byte-to-unicode map, BPE with "</w>", then <|startoftext|> ... <|endoftext|>.
That is what SD pipelines get with diffusers 0.42 + transformers 5.23, so that is what is matched.
"""

import gzip
import json
import os
import shutil
import sys
import tempfile
import unicodedata

import open_clip
import tokenizers
import transformers
from transformers import CLIPTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
VOCAB = os.path.join(ROOT, "crates", "anodiff", "assets", "clip")  # embedded by the library
NFC_RS = os.path.join(ROOT, "crates", "anodiff", "src", "sd", "tokenizer", "nfc_tables.rs")


def byte_symbols():
    """GPT-2/CLIP byte-to-unicode order: printable latin-1 bytes map to themselves, the rest to 256+n."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    order, chars, n = list(keep), list(keep), 0
    for b in range(256):
        if b not in keep:
            order.append(b)
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def write_vocab():
    gz = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    assert all(len(m.split(" ")) == 2 for m in merges)
    syms = byte_symbols()
    tokens = syms + [s + "</w>" for s in syms] + ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(tokens) == len(vocab) == 49408, len(vocab)
    with open(os.path.join(VOCAB, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(VOCAB, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"vocab: {len(vocab)} entries, merges: {len(merges)}")


def write_configs():
    def added(c):
        return {"__type": "AddedToken", "content": c, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    def plain(c):
        d = added(c)
        d.pop("__type")
        return d

    for name, pad in [("sd1", "<|endoftext|>"), ("sd2", "!")]:
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        cfg = {"add_prefix_space": False, "bos_token": added("<|startoftext|>"), "do_lower_case": True,
               "eos_token": added("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
               "name_or_path": "openai/clip-vit-large-patch14", "pad_token": pad,
               "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
               "unk_token": added("<|endoftext|>")}
        smap = {"bos_token": plain("<|startoftext|>"), "eos_token": plain("<|endoftext|>"),
                "pad_token": pad, "unk_token": plain("<|endoftext|>")}
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
            json.dump(smap, f, indent=2)


LONG = ("a highly detailed photograph of a rusty metal screw with a deep scratch on its thread, "
        "studio lighting, macro lens, 8k, sharp focus, trending on artstation, by greg rutkowski "
        "and alphonse mucha, intricate, elegant, octane render, unreal engine 5, volumetric fog, "
        "cinematic composition, depth of field, hyperrealistic, award winning photo, 35mm film grain")

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "a photograph of a sks bottle with a crack defect",
    "A Photo Of A CAT",
    "masterpiece, best quality, (extremely detailed:1.2), [cat|dog], {blue sky}",
    "hello, world! how are you?",
    "punctuation... !!! ??? ;;; ::: --- ___ ***",
    "1234567",
    "3.14",
    "pi is 3.14159 and e is 2.71828",
    "version 1.5, 512x512 px, 50 steps, cfg=7.5",
    "it's a dog",
    "we'll see, they're here, I've been, I'm ok, you'd go, don't",
    "IT'S WE'LL THEY'RE",
    "it\u2019s curly \u2018quoted\u2019 \u201cdouble\u201d",
    "rock'n'roll o'clock ''s '' 'quoted'",
    "caf\u00e9 na\u00efve \u00fcber stra\u00dfe",
    "cafe\u0301 decomposed accent",
    "\u212b angstrom and \u2126 ohm signs",
    "\u4e00\u53ea\u732b\u5750\u5728\u6905\u5b50\u4e0a",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u30ab\u30bf\u30ab\u30ca",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041a\u041e\u0422",
    "\u039f\u0394\u039f\u03a3 greek capitals",
    "emoji \U0001F600\U0001F408 and \u2764\ufe0f flag \U0001F1EF\U0001F1F5",
    "family \U0001F468\u200D\U0001F469\u200D\U0001F467 zwj",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \ud55c\uad6d\uc5b4",
    "MiXeD CaSe WoRdS",
    "multiple    spaces   here",
    "tabs\tand\nnewlines\r\nand\u000bvertical",
    "   leading and trailing whitespace   ",
    "\n\t ",
    "",
    " ",
    "a",
    "!",
    LONG,
    LONG + " " + LONG,
    "word " * 80,
    "<|endoftext|>",
    "before <|endoftext|> after",
    "<|startoftext|>start token inside",
    "<|ENDOFTEXT|> upper-case special",
    "<|endoftext|><|endoftext|>",
    "<b>bold</b> &amp; <a href=\"https://example.com\">link</a>",
    "<div class='x'>html-ish</div>",
    "email me@example.com or visit www.example.org/path?q=1",
    "snake_case camelCase kebab-case",
    "null\x00char bell\x07 escape\x1b[0m",
    "zero\u200bwidth non\u00a0breaking ideographic\u3000space",
    "'\u017f long s and \u212a kelvin",
    "\u0130stanbul \u0049 dotless \u0131",
    "\u00bd \u2153 \u00b2 \u2460 \u2167 numbers",
    "\uff21\uff22\uff23 fullwidth \uff11\uff12\uff13",
    "\ufb01 ligature \u1e9e capital sharp s",
    "a\u0301\u0316 reorder marks e\u0316\u0301",
    "\u1100\u1161\u11a8 hangul jamo",
    "dots...and---dashes",
    "$100 #hashtag @mention 50% a&b a+b=c",
    "under_score__double",
    "hyper-realistic, 4k, octane-render",
    "the quick brown fox jumps over the lazy dog",
    "a photo of a metal nut with a color defect, close up",
    "a cable with a missing wire, industrial inspection photo",
    "ultra-detailed closeup of a broken pill",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "\U0001F600" * 40,
    "x" * 300,
]

SD2_PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    "hello!",
    "wow!! amazing!!!",
    "<|ENDOFTEXT|> normalized special",
    LONG,
]


def random_prompts(n, seed=1234):
    """Random strings over the character classes that stress normalization and splitting."""
    import random

    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n\r\u00a0\u3000",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "'", "\u00e9\u00fc\u00df\u00c5\u0130\u0131\u017f\u212a\u03a3",
        "\u0300\u0301\u0316\u0327\u0308\u0345", "\u4e00\u732b\u65e5\u3042\u30ab\ud55c",
        "\u1100\u1161\u11a8\u0b47\u0b3e", "\U0001F600\U0001F408\u2764\ufe0f\u200d", "\x00\x07\x1b\x7f",
    ]
    words = ["<|endoftext|>", "<|ENDOFTEXT|>", "<|startoftext|>", "'s", "'ll", "it's", "photo", "!!"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 25)):
            if rng.random() < 0.1:
                parts.append(rng.choice(words))
            elif rng.random() < 0.05:
                parts.append(chr(rng.randrange(0x20, 0x30000)) if rng.random() < 0.9 else chr(rng.randrange(0x30000, 0x110000)))
            else:
                parts.append(rng.choice(rng.choice(pools)))
        text = "".join(parts)
        out.append("".join(c for c in text if not 0xD800 <= ord(c) < 0xE000))
    return out


def ids(tok, text, padded):
    if padded:
        return tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    return tok(text).input_ids


def cases_for(tok, prompts):
    return [{"text": p, "padded": ids(tok, p, True), "unpadded": ids(tok, p, False)} for p in prompts]


def write_cases():
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for name in ["sd1", "sd2"]:
            d = os.path.join(tmp, name)
            shutil.copytree(os.path.join(OUT, name), d)
            for f in ["vocab.json", "merges.txt"]:
                shutil.copy(os.path.join(VOCAB, f), d)
            dirs[name] = d
        plain = CLIPTokenizer(os.path.join(VOCAB, "vocab.json"), os.path.join(VOCAB, "merges.txt"))
        plain.model_max_length = 77  # SD-1 default used by ClipTokenizer::from_files
        sd1 = CLIPTokenizer.from_pretrained(dirs["sd1"])
        sd2 = CLIPTokenizer.from_pretrained(dirs["sd2"])
        assert sd1.model_max_length == 77 and sd2.model_max_length == 77
        assert (sd1.pad_token_id, sd2.pad_token_id) == (49407, 0)
        out = {
            "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
            "vocab_size": len(plain.get_vocab()),
            "files": cases_for(plain, PROMPTS),
            "sd1_dir": cases_for(sd1, PROMPTS),
            "sd2_dir": cases_for(sd2, SD2_PROMPTS + PROMPTS[:10]),
            "random_sd2_dir": cases_for(sd2, random_prompts(150, seed=1)),
            "random_files": cases_for(plain, random_prompts(150, seed=2)),
        }
    assert len(out["files"]) >= 60
    # One case per line: small and still diffable.
    parts = []
    for key, val in out.items():
        if isinstance(val, list):
            rows = ",\n".join(json.dumps(c, ensure_ascii=True, separators=(",", ":")) for c in val)
            parts.append(f"{json.dumps(key)}: [\n{rows}\n]")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(val)}")
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(parts) + "\n}\n")
    print(f"cases: {len(out['files'])} prompts (+{len(out['sd2_dir'])} SD-2)")


def write_nfc_tables():
    """Canonical single-step decompositions, composition flags and combining classes.

    Taken from Python's unicodedata, then restricted to what the `tokenizers` library (whose NFC is
    the reference) knows: its tables are older, so combining classes and decompositions of
    characters added later are dropped (canonical classes never change once assigned).
    """
    nfd, nfc = tokenizers.normalizers.NFD(), tokenizers.normalizers.NFC()
    decomp, ccc, dropped = [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        d = unicodedata.decomposition(c)
        canonical = bool(d) and not d.startswith("<")
        cl = unicodedata.combining(c)
        # Probe: a mark of class < 240 after U+0345 (class 240) is moved before it iff it is known.
        if cl and not canonical and cl < 240 and nfd.normalize_str("x\u0345" + c) != "x" + c + "\u0345":
            dropped.append(cp)
            cl = 0
        if cl:
            if ccc and ccc[-1][1] == cp - 1 and ccc[-1][2] == cl:
                ccc[-1][1] = cp
            else:
                ccc.append([cp, cp, cl])
        if not canonical or 0xAC00 <= cp <= 0xD7A3:
            continue
        if nfd.normalize_str(c) != unicodedata.normalize("NFD", c):
            dropped.append(cp)
            continue
        parts = [int(x, 16) for x in d.split()]
        first, second = parts[0], (parts[1] if len(parts) == 2 else 0)
        # A primary composite is a two-part decomposition that NFC re-creates.
        composes = int(second != 0 and nfc.normalize_str(unicodedata.normalize("NFD", c)) == c)
        decomp.append((cp, first, second, composes))
    print(f"nfc: {len(dropped)} characters newer than the tokenizers tables ignored")
    lines = [
        "// @generated by tools/parity/make_tokenizer_fixtures.py from Python's unicodedata "
        f"{unicodedata.unidata_version},",
        f"// restricted to what tokenizers {tokenizers.__version__} knows. Do not edit.",
        "",
        "/// (code point, first, second or 0, 1 if it is a primary composite), sorted by code point.",
        "#[rustfmt::skip]",
        "pub(super) static DECOMPOSITIONS: &[(u32, u32, u32, u8)] = &[",
    ]
    for i in range(0, len(decomp), 6):
        lines.append(" ".join(f"(0x{a:X},0x{b:X},0x{c:X},{f})," for a, b, c, f in decomp[i : i + 6]))
    lines += ["];", "", "/// (first, last, canonical combining class), sorted, non-zero classes only.",
              "#[rustfmt::skip]", "pub(super) static COMBINING_CLASSES: &[(u32, u32, u8)] = &["]
    for i in range(0, len(ccc), 8):
        lines.append(" ".join(f"(0x{a:X},0x{b:X},{c})," for a, b, c in ccc[i : i + 8]))
    lines += ["];", ""]
    with open(NFC_RS, "w") as f:
        f.write("\n".join(lines))
    print(f"nfc tables: {len(decomp)} decompositions, {len(ccc)} class ranges")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(VOCAB, exist_ok=True)
    write_vocab()
    write_configs()
    write_cases()
    write_nfc_tables()
    sys.exit(0)
