#!/usr/bin/env python
"""Parity fixtures for anodiff's LoRA (crates/anodiff/src/sd/lora/).

Reuses the base weights of the UNet fixture (tests/fixtures/unet/sd1/unet) and of the SD-1 CLIP
fixture (tests/fixtures/clip/sd1/text_encoder); nothing of them is copied. Adds a peft LoRA
(r=4, lora_alpha=8, so scale 2; dropout 0) to the UNet attention projections
(`to_q|to_k|to_v|to_out.0`) and to the CLIP attention projections (`q_proj|k_proj|v_proj|out_proj`),
with lora_A AND lora_B random (peft's default would zero B and make the test vacuous).

Writes under tests/fixtures/lora/:
  pytorch_lora_weights.safetensors
      exactly what `StableDiffusionPipeline.save_lora_weights` writes (diffusers/peft names
      `unet.<layer>.lora_A.weight`, `text_encoder.<layer>.lora_B.weight`, and the adapter configs
      as JSON in the `lora_adapter_metadata` header entry, which carries lora_alpha).
  kohya.safetensors
      the same weights under kohya-ss names (`lora_unet_<layer with _>.lora_down.weight`,
      `.lora_up.weight`, `.alpha`; `lora_te_text_model_encoder_layers_<i>_self_attn_<p>.…`).
  reference.safetensors
      UNet: `sample [2,4,8,8]`, `timesteps [2]`, `encoder_hidden_states [2,7,16]`, `unet_out`
      (diffusers with the LoRA loaded through `pipe.load_lora_weights`-equivalent peft path) and
      `unet_base` (without it). CLIP: `ids [2,77]` (as f32), `clip_out` / `clip_base`
      (last_hidden_state with / without the LoRA).

Versions: torch 2.15 (CPU), diffusers 0.42.1, peft 0.21.2, transformers 5.23.0, safetensors.
Regenerate (from the repository root):
    python tools/parity/make_lora_fixtures.py

Check that a file written by anodiff loads in diffusers and reproduces the references:
    ANODIFF_LORA_EXPORT=/tmp/anodiff_lora.safetensors cargo test --release -p anodiff --test lora save_load
    python tools/parity/make_lora_fixtures.py --check /tmp/anodiff_lora.safetensors
"""

import json
import sys
from pathlib import Path

import diffusers
import peft
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextModel

ROOT = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
OUT = ROOT / "lora"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
RANK, ALPHA = 4, 8


def randomise_lora(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            elif "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)


def portable(cfg):
    """The adapter config as diffusers stores it, minus this machine's absolute paths."""
    d = cfg.to_dict()
    d["base_model_name_or_path"] = None
    # peft keeps target_modules as a set; sort it so regenerating gives identical bytes.
    d["target_modules"] = sorted(d["target_modules"])
    return d


def kohya(state, prefix, kohya_prefix):
    """diffusers/peft names -> kohya-ss names (underscored module path, lora_down/up, alpha)."""
    out = {}
    for k, v in state.items():
        module, kind = k.removeprefix(prefix + ".").rsplit(".lora_", 1)
        base = kohya_prefix + module.replace(".", "_")
        out[base + (".lora_down.weight" if kind.startswith("A") else ".lora_up.weight")] = v
        out[base + ".alpha"] = torch.tensor(float(ALPHA))
    return out


def check(path):
    """Loads an anodiff-written LoRA file through diffusers and compares with the references."""
    path = Path(path)
    ref = {}
    with safe_open(OUT / "reference.safetensors", "pt") as f:
        ref = {k: f.get_tensor(k) for k in f.keys()}
    unet = UNet2DConditionModel.from_pretrained(ROOT / "unet" / "sd1" / "unet").eval()
    te = CLIPTextModel.from_pretrained(ROOT / "clip" / "sd1" / "text_encoder", dtype=torch.float32).eval()
    pipe = StableDiffusionPipeline(vae=None, text_encoder=te, tokenizer=None, unet=unet, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(path.parent, weight_name=path.name)
    with torch.no_grad():
        u = unet(ref["sample"], ref["timesteps"], ref["encoder_hidden_states"]).sample
        t = te(input_ids=ref["ids"].long()).last_hidden_state
    eu = ((u - ref["unet_out"]).abs().max() / ref["unet_out"].abs().max()).item()
    et = ((t - ref["clip_out"]).abs().max() / ref["clip_out"].abs().max()).item()
    print(f"{path}: diffusers rel err unet {eu:.2e}, clip {et:.2e}")
    assert eu < 1e-4 and et < 1e-4


def main():
    assert diffusers.__version__ == "0.42.1" and peft.__version__ == "0.21.2"
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(42)

    unet = UNet2DConditionModel.from_pretrained(ROOT / "unet" / "sd1" / "unet").eval()
    te = CLIPTextModel.from_pretrained(ROOT / "clip" / "sd1" / "text_encoder", dtype=torch.float32).eval()

    sample = torch.randn((2, 4, 8, 8), generator=gen)
    timesteps = torch.tensor([10.0, 640.5])
    ehs = torch.randn((2, 7, 16), generator=gen)
    ids = torch.randint(3, 998, (2, 77), generator=gen)
    ids[:, 0] = 998
    ids[0, 9:] = 999
    ids[1, 40:] = 999
    with torch.no_grad():
        unet_base = unet(sample, timesteps, ehs).sample
        clip_base = te(input_ids=ids).last_hidden_state

    ucfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=UNET_TARGETS, init_lora_weights=False)
    tcfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=CLIP_TARGETS, init_lora_weights=False)
    unet.add_adapter(ucfg)
    te.add_adapter(tcfg)
    randomise_lora(unet, gen)
    randomise_lora(te, gen)

    StableDiffusionPipeline.save_lora_weights(
        OUT,
        unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(te),
        unet_lora_adapter_metadata=portable(ucfg),
        text_encoder_lora_adapter_metadata=portable(tcfg),
    )
    path = OUT / "pytorch_lora_weights.safetensors"
    with safe_open(path, "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == ALPHA and meta["unet.r"] == RANK, meta
    print(f"{len(state)} tensors, e.g. {sorted(state)[:2]}, {[k for k in sorted(state) if k.startswith('text_encoder')][:1]}")

    # Reference outputs with the adapter exactly as peft applies it.
    with torch.no_grad():
        unet_out = unet(sample, timesteps, ehs).sample
        clip_out = te(input_ids=ids).last_hidden_state
    # The saved file must be what is in the modules: reload it into fresh models and compare.
    unet2 = UNet2DConditionModel.from_pretrained(ROOT / "unet" / "sd1" / "unet").eval()
    te2 = CLIPTextModel.from_pretrained(ROOT / "clip" / "sd1" / "text_encoder", dtype=torch.float32).eval()
    pipe = StableDiffusionPipeline(vae=None, text_encoder=te2, tokenizer=None, unet=unet2, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(OUT, weight_name="pytorch_lora_weights.safetensors")
    with torch.no_grad():
        d_u = (unet2(sample, timesteps, ehs).sample - unet_out).abs().max().item()
        d_t = (te2(input_ids=ids).last_hidden_state - clip_out).abs().max().item()
    print(f"reload through pipe.load_lora_weights: unet diff {d_u:.2e}, clip diff {d_t:.2e}")
    assert d_u < 1e-5 and d_t < 1e-5

    ks = {}
    ks.update(kohya({k: v for k, v in state.items() if k.startswith("unet.")}, "unet", "lora_unet_"))
    te_state = {k.replace("text_encoder.", "text_encoder.text_model.", 1) if ".text_model." not in k else k: v
                for k, v in state.items() if k.startswith("text_encoder.")}
    ks.update(kohya(te_state, "text_encoder", "lora_te_"))
    save_file({k: v.contiguous() for k, v in ks.items()}, str(OUT / "kohya.safetensors"))

    ref = {
        "sample": sample, "timesteps": timesteps, "encoder_hidden_states": ehs,
        "unet_out": unet_out, "unet_base": unet_base,
        "ids": ids.float(), "clip_out": clip_out, "clip_base": clip_base,
    }
    save_file({k: v.contiguous() for k, v in ref.items()}, str(OUT / "reference.safetensors"))
    print(f"max|unet_out - unet_base| = {(unet_out - unet_base).abs().max():.3f}, "
          f"max|clip_out - clip_base| = {(clip_out - clip_base).abs().max():.3f}")
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"total fixture size: {total / 1e3:.1f} KB")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    else:
        main()
