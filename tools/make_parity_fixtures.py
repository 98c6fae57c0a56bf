#!/usr/bin/env python3
"""Regenerates every diffusers/transformers parity fixture under tests/fixtures/ (and the embedded CLIP
vocabulary in crates/anodiff/assets/clip), by running the per-component scripts in tools/parity/ in
dependency order: the tokenizer first (the pipeline fixture tokenizes with its vocabulary).

Python packages and their versions: tools/requirements.txt (its header shows how to make the
virtualenv, outside the repository). `python` below is that virtualenv's, activated.
Usage: python tools/make_parity_fixtures.py [component ...]
       components: tokenizer clip scheduler vae unet pipeline config lpips (default: all)
The fixtures are only inputs of `cargo test`; nothing here is needed at run time or in CI.
"""
import os
import subprocess
import sys

ORDER = ["tokenizer", "clip", "scheduler", "vae", "unet", "pipeline", "config", "lpips"]
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
