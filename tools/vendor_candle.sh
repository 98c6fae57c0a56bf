#!/bin/sh
# Re-creates vendor/candle-core: the crates.io release of candle-core with anodiff's backward
# patch (vendor/candle-core.patch) applied. Run from the repository root, with the version the
# workspace pins, whenever candle is upgraded; then run `cargo test --release --workspace`
# (tests/backprop_patch.rs checks the patch is in effect) and commit the result.
#   sh tools/vendor_candle.sh 0.11.1
set -eu
VER=${1:?usage: tools/vendor_candle.sh VERSION}
DEST=vendor/candle-core
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# The registry copy when cargo has one, else the published .crate file.
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-"$VER" 2>/dev/null | head -1 || true)
if [ -z "$SRC" ]; then
    curl -sSfL "https://static.crates.io/crates/candle-core/candle-core-$VER.crate" | tar -xz -C "$TMP"
    SRC="$TMP/candle-core-$VER"
fi
rm -rf "$DEST"
mkdir -p "$DEST"
cp -r "$SRC/src" "$SRC/Cargo.toml" "$SRC/LICENSE" "$SRC/README.md" "$DEST/"
# Cargo.toml names upstream's tests, benches and examples, which are not vendored: drop those targets.
python3 - "$DEST/Cargo.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r'\n\[\[(example|test|bench)\]\]\n(?:[^\[\n][^\n]*\n)*', '\n', text)
open(path, 'w').write(text)
PY
patch -d "$DEST" -p1 < vendor/candle-core.patch
echo "vendored candle-core $VER with vendor/candle-core.patch into $DEST"
