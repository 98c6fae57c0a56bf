#!/usr/bin/env python3
"""Parity fixtures for anodiff::sd::clip (the CLIP text encoder, SD's `text_encoder/`).

Generated with: torch 2.15 (CPU), transformers 5.23.0, safetensors, numpy.
Regenerate (from the repository root):
    python tools/parity/make_clip_fixtures.py

Writes under tests/fixtures/clip/:
  sd1/text_encoder/{config.json, model.safetensors}
      SD-1 style (ViT-L/14 shape, tiny): hidden 64, 4 layers, 4 heads, intermediate 128,
      quick_gelu, vocab 1000, legacy `eos_token_id: 2` (as in the real SD-1.x config, which makes
      transformers pool at argmax(ids)). Stored in **f16** with the `text_model.` name prefix of
      real SD checkpoints (written by transformers 4.x).
  sd2/text_encoder/{config.json, model.safetensors}
      SD-2 style (OpenCLIP-H shape, tiny): hidden 48, 3 layers, 3 heads, intermediate 192, gelu,
      vocab 512, `eos_token_id: 500` (pooling at the first EOS). Stored in f32 exactly as
      transformers 5.23 `save_pretrained` writes it (no `text_model.` prefix).
  reference.safetensors
      `ids_{sd1,sd2}` [3, 77] (stored as f32, exact small integers) and for each model
      `{m}.last_hidden_state` [3, 77, H], `{m}.penultimate` [3, 77, H] (= hidden_states[-2], no
      final LayerNorm), `{m}.pooled` [3, H] (transformers' pooler_output).

References are computed by reloading each saved folder with `CLIPTextModel.from_pretrained`
(so they reflect how transformers reads these exact files) and running in f32.
"""
import json
import os
import shutil

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "clip")
T = 77


def build(seed, **cfg_kwargs):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(**cfg_kwargs)
    model = CLIPTextModel(cfg).eval()
    # The default init gives near-identity layers (tiny std); widen it so every weight matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif "embedding" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model


def save(model, folder, dtype, prefix):
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    model.to(dtype).save_pretrained(folder)
    model.float()
    path = os.path.join(folder, "model.safetensors")
    sd = load_file(path)
    if prefix:
        sd = {prefix + k: v.contiguous() for k, v in sd.items()}
        save_file(sd, path, metadata={"format": "pt"})
    return sorted(sd.keys())


def ids_sd1():
    # bos 998, eos 999 = the largest id (as 49407 is in the real vocabulary); SD-1 pads with EOS,
    # so pooling relies on argmax returning the FIRST maximal position.
    g = torch.Generator().manual_seed(11)
    rows = []
    for n_words in (5, 20, T - 2):
        words = torch.randint(2, 998, (n_words,), generator=g)
        row = torch.cat([torch.tensor([998]), words, torch.tensor([999])])
        row = torch.cat([row, torch.full((T - row.numel(),), 999)])
        rows.append(row)
    return torch.stack(rows)


def ids_sd2():
    # bos 499, eos 500, pad 0 ("!" in SD-2's tokenizer). Words include 511 > eos so that
    # argmax(ids) would pick the wrong position: pooling must look for eos_token_id.
    g = torch.Generator().manual_seed(12)
    rows = []
    for n_words, pad in ((7, 0), (30, 500), (T - 2, 0)):
        words = torch.randint(1, 499, (n_words,), generator=g)
        words[n_words // 2] = 511
        row = torch.cat([torch.tensor([499]), words, torch.tensor([500])])
        row = torch.cat([row, torch.full((T - row.numel(),), pad)])
        rows.append(row)
    return torch.stack(rows)


def reference(folder, ids, tag):
    model = CLIPTextModel.from_pretrained(folder, dtype=torch.float32).eval()
    # Make sure transformers really read every tensor of the file (prefixed or not).
    on_disk = {k.removeprefix("text_model."): v for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    state = model.state_dict()
    assert sorted(on_disk) == sorted(state), (sorted(on_disk), sorted(state))
    for k, v in on_disk.items():
        assert torch.equal(v.float(), state[k]), k
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    return {
        f"{tag}.last_hidden_state": out.last_hidden_state.float().contiguous(),
        f"{tag}.penultimate": out.hidden_states[-2].float().contiguous(),
        f"{tag}.pooled": out.pooler_output.float().contiguous(),
        f"ids_{tag}": ids.float().contiguous(),
    }


def main():
    assert transformers.__version__ == "5.23.0", transformers.__version__
    os.makedirs(ROOT, exist_ok=True)
    refs = {}

    sd1 = build(
        1,
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=T,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    d1 = os.path.join(ROOT, "sd1", "text_encoder")
    save(sd1, d1, torch.float16, prefix="text_model.")
    refs.update(reference(d1, ids_sd1(), "sd1"))

    sd2 = build(
        2,
        vocab_size=512,
        hidden_size=48,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=3,
        max_position_embeddings=T,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=32,
        bos_token_id=499,
        eos_token_id=500,
        pad_token_id=0,
    )
    d2 = os.path.join(ROOT, "sd2", "text_encoder")
    save(sd2, d2, torch.float32, prefix=None)
    refs.update(reference(d2, ids_sd2(), "sd2"))

    # Sanity: the two pooling rules really differ on these inputs.
    ids2 = refs["ids_sd2"].long()
    assert not torch.equal(ids2.argmax(-1), (ids2 == 500).int().argmax(-1))

    save_file(refs, os.path.join(ROOT, "reference.safetensors"))
    for k, v in sorted(refs.items()):
        print(f"{k:28s} {tuple(v.shape)} max|x|={v.abs().max().item():.4g}")
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            p = os.path.join(dirpath, f)
            print(f"{os.path.relpath(p, ROOT):40s} {os.path.getsize(p)} bytes")
    print(json.dumps(json.load(open(os.path.join(d1, "config.json")))["dtype"]))


if __name__ == "__main__":
    main()
