#!/usr/bin/env python3
"""Does diffusers / transformers read what anodiff writes as what it wrote itself?

Input: the folders written by the Rust example
    cargo run --release --example write_roundtrip_folders [OUT]      (OUT: target/config-roundtrip)
Then, from the repository root:
    python tools/parity/check_config_roundtrip.py [OUT]

Checks
  configs   for every fixture in tests/fixtures/configs (tools/parity/make_config_fixtures.py): the
            JSON anodiff re-saved equals diffusers' / transformers' file (same keys, same values),
            and loading both with the library (`from_config` for models — on the meta device —,
            `from_pretrained` for schedulers and CLIPTextConfig) gives equal config dicts.
  models    the folders `StableDiffusion::save` wrote: `StableDiffusionPipeline.from_pretrained`
            loads them with no missing or unexpected weight; model_index.json equals what the
            pipeline's own `save_pretrained` writes (apart from anodiff's pixel-space keys); the
            tokenizer gives anodiff's token ids; the text encoder and UNet reproduce anodiff's
            outputs (max abs difference printed; tolerance 1e-4, both run in f32).
Exit status 1 on any failure. Needs torch 2.15 / diffusers 0.42.1 / transformers 5.23.
"""
import json
import sys
import tempfile
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextConfig

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "configs"
FILE = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
        "scheduler": "scheduler_config.json"}
# Keys whose values describe the loading, not the config.
VOLATILE = {"_name_or_path", "_use_default_values", "_diffusers_version", "transformers_version"}
TOL = 1e-4
failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


def loaded_config(kind, folder):
    """The config dict the library ends up with after reading `folder`."""
    if kind == "unet" or kind == "vae":
        cls = UNet2DConditionModel if kind == "unet" else AutoencoderKL
        with torch.device("meta"):
            model = cls.from_config(cls.load_config(folder))
        cfg = dict(model.config)
    elif kind == "text_encoder":
        cfg = CLIPTextConfig.from_pretrained(folder).to_dict()
    else:
        name = json.loads((Path(folder) / FILE[kind]).read_text())["_class_name"]
        cfg = dict(getattr(diffusers, name).from_pretrained(folder).config)
    return {k: v for k, v in cfg.items() if k not in VOLATILE}


def check_configs(ours_root):
    for theirs in sorted(p for p in FIXTURES.glob("*/*") if p.is_dir()):
        kind, name = theirs.parent.name, theirs.name
        ours = ours_root / kind / name
        label = f"{kind}/{name}"
        if not (ours / FILE[kind]).is_file():
            check(False, f"{label}: anodiff wrote no {FILE[kind]}")
            continue
        a = json.loads((theirs / FILE[kind]).read_text())
        b = json.loads((ours / FILE[kind]).read_text())
        diff = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
        check(not diff, f"{label}: written JSON equals the library's file"
              + (f" (differs at {diff})" if diff else f" ({len(a)} keys)"))
        la, lb = loaded_config(kind, theirs), loaded_config(kind, ours)
        diff = sorted(k for k in set(la) | set(lb) if la.get(k, "<absent>") != lb.get(k, "<absent>"))
        check(not diff, f"{label}: loaded config dicts equal" + (f" (differ at {diff})" if diff else ""))


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def check_model(folder, ref_path):
    label = folder.name
    index = json.loads((folder / "model_index.json").read_text())
    pixel = index.get("anodiff_pixel_space", False)
    extra = {"vae": None} if pixel else {}
    pipe = StableDiffusionPipeline.from_pretrained(folder, **extra)
    for comp in ["unet", "text_encoder"] + ([] if pixel else ["vae"]):
        model_cls = type(getattr(pipe, comp))
        _, info = model_cls.from_pretrained(folder / comp, output_loading_info=True)
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        check(not bad, f"{label}/{comp}: {model_cls.__name__}.from_pretrained loads every weight"
              + (f" ({bad})" if bad else ""))
    check(type(pipe.scheduler).__name__ == index["scheduler"][1],
          f"{label}: scheduler class {type(pipe.scheduler).__name__}")
    # The pipeline's own save: model_index.json and the model configs as diffusers writes them.
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp)
        theirs = json.loads((Path(tmp) / "model_index.json").read_text())
        for sub in ["unet", "text_encoder", "vae"]:
            if (folder / sub).is_dir():
                a = json.loads((Path(tmp) / sub / "config.json").read_text())
                b = json.loads((folder / sub / "config.json").read_text())
                diff = sorted(k for k in set(a) | set(b)
                              if k not in VOLATILE | {"dtype"} and a.get(k) != b.get(k))
                check(not diff, f"{label}/{sub}/config.json equals the library's re-save"
                      + (f" (differs at {diff})" if diff else ""))
        # Re-saved by the class itself: the SD pipelines rewrite some scheduler keys on load
        # (clip_sample, steps_offset) for old hub files.
        sched = getattr(diffusers, index["scheduler"][1]).from_pretrained(folder / "scheduler")
        sched.save_config(Path(tmp) / "sched")
        a = json.loads((Path(tmp) / "sched" / "scheduler_config.json").read_text())
        b = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        check(a == b, f"{label}/scheduler/scheduler_config.json equals the library's re-save")
    ours = {k: v for k, v in index.items() if not k.startswith("anodiff_")}
    diff = sorted(k for k in set(ours) | set(theirs) if k not in VOLATILE and ours.get(k) != theirs.get(k))
    check(not diff, f"{label}: model_index.json equals the pipeline's own save_pretrained"
          + (f" (differs at {diff}: ours {[ours.get(k) for k in diff]}, theirs {[theirs.get(k) for k in diff]})" if diff else ""))
    if pixel:
        norm = index.get("anodiff_pixel_norm")
        check(norm is None or (len(norm["mean"]) == 3 and len(norm["std"]) == 3),
              f"{label}: anodiff_pixel_norm {norm}")

    ref = load_file(str(ref_path))
    ids = pipe.tokenizer("a photo of a metal_nut, scratched!", padding="max_length", max_length=77,
                         truncation=True, return_tensors="pt").input_ids
    check(ids[0].tolist() == ref["ids"].long().tolist(), f"{label}: tokenizer ids equal anodiff's")
    with torch.no_grad():
        text = pipe.text_encoder(ref["ids"].long()[None]).last_hidden_state
        d = max_diff(text, ref["text"])
        check(d < TOL, f"{label}: text encoder output, max |diff| {d:.2e}")
        out = pipe.unet(ref["sample"], ref["timesteps"], ref["text"].repeat(2, 1, 1)).sample
        d = max_diff(out, ref["unet_out"])
        check(d < TOL, f"{label}: UNet output, max |diff| {d:.2e}")


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "config-roundtrip"
    if not out.is_dir():
        sys.exit(f"{out} does not exist: run `cargo run --release --example write_roundtrip_folders` first")
    print(f"diffusers {diffusers.__version__}; reading {out}")
    check_configs(out / "configs")
    for folder in sorted(p for p in (out / "models").iterdir() if p.is_dir()):
        check_model(folder, out / "models" / f"{folder.name}.check.safetensors")
    print(f"\n{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
