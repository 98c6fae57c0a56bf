#!/usr/bin/env python3
"""Regenerates every diffusers/transformers parity fixture under tests/fixtures/ (and the embedded CLIP
vocabulary in crates/anodiff/assets/clip), by running the per-component scripts in tools/parity/ in
dependency order: the tokenizer first (the pipeline fixture tokenizes with its vocabulary).

Versions used for the committed fixtures: torch 2.15.0 (CPU), diffusers 0.42.1, transformers 5.23.0,
open_clip_torch 3.3.0, safetensors 0.7. Install into a virtualenv outside the repo:
    python3 -m venv /work/venv && /work/venv/bin/pip install torch==2.15.0 diffusers==0.42.1 \
        transformers==5.23.0 open-clip-torch==3.3.0 safetensors numpy
Usage: /work/venv/bin/python tools/make_parity_fixtures.py [component ...]
       components: tokenizer clip scheduler vae unet pipeline config (default: all)
The fixtures are only inputs of `cargo test`; nothing here is needed at run time or in CI.
"""
import os
import subprocess
import sys

ORDER = ["tokenizer", "clip", "scheduler", "vae", "unet", "pipeline", "config"]
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity")


def main():
    wanted = sys.argv[1:] or ORDER
    unknown = [w for w in wanted if w not in ORDER]
    if unknown:
        sys.exit(f"unknown component(s) {unknown}; known: {ORDER}")
    for name in ORDER:
        if name in wanted:
            script = os.path.join(HERE, f"make_{name}_fixtures.py")
            print(f"== {name}: {script}", flush=True)
            subprocess.run([sys.executable, script], check=True)


if __name__ == "__main__":
    main()
