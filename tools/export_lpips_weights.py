#!/usr/bin/env python3
"""Writes LPIPS network weights as one safetensors file for anodiff's `--lpips-weights`
(`anodiff detect --distance lpips`, `anodiff detect-train --vae-perceptual lpips`).

The file holds the tensors of `lpips.LPIPS(net=NET).state_dict()` under their own names:
the ImageNet backbone (`net.slice<s>.<j>.weight|bias`) and the learned linear heads
(`lin<l>.model.1.weight`). The heads ship inside the `lpips` package; the backbone is torchvision's
AlexNet / VGG16, which torchvision downloads on first use (or finds in the torch hub cache,
`~/.cache/torch/hub/checkpoints/`) — so run this where those weights are available, once, and
copy the file to the machine that runs anodiff. Nothing in anodiff downloads weights.

Usage: python tools/export_lpips_weights.py --net alex --out lpips-alex.safetensors
       python tools/export_lpips_weights.py --net vgg  --out lpips-vgg.safetensors
       --backbone FILE   torchvision state dict (.pth) to use instead of the hub download
       --random-backbone for plumbing tests only: a random backbone (NOT a perceptual metric)

Versions: lpips 0.1.4, torch 2.15.0, torchvision 0.29.2 (tools/requirements.txt).
"""
import argparse
import sys

import lpips
import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=["alex", "vgg"], default="alex")
    ap.add_argument("--out", required=True)
    ap.add_argument("--backbone", help="torchvision state dict of alexnet/vgg16 (.pth)")
    ap.add_argument("--random-backbone", action="store_true")
    a = ap.parse_args()

    use_hub = not (a.backbone or a.random_backbone)
    model = lpips.LPIPS(net=a.net, pretrained=True, pnet_rand=not use_hub, verbose=False)
    if a.backbone:
        tv = torch.load(a.backbone, map_location="cpu")
        loaded = 0
        for name, p in model.net.named_parameters():
            # slice<s>.<j>.weight  <-  features.<j>.weight
            key = "features." + ".".join(name.split(".")[1:])
            if key not in tv:
                sys.exit(f"{a.backbone}: no tensor `{key}` (is it torchvision's {a.net} state dict?)")
            with torch.no_grad():
                p.copy_(tv[key])
            loaded += 1
        print(f"backbone: {loaded} tensors from {a.backbone}")
    elif a.random_backbone:
        print("WARNING: random backbone; this file is for plumbing tests, not a perceptual metric")
    tensors = {
        k: v.detach().float().contiguous()
        for k, v in model.state_dict().items()
        # `lins.<l>` repeats `lin<l>` (the same modules, registered twice); the shift/scale
        # constants are fixed by the definition.
        if not k.startswith(("scaling_layer.", "lins."))
    }
    save_file(tensors, a.out)
    print(f"wrote {len(tensors)} tensors ({a.net}) to {a.out}")


if __name__ == "__main__":
    main()
