#!/usr/bin/env bash
# Prepare benchmarks/gpu.sh's run on the device machine, here (it has pip and the index; the device has neither, and
# only the checkout travels, at most 64 MiB): Ray's slim wheel and the pure-Python wheels Ray and raylab need there,
# into .whl/, and the data under shared/data/ (PneumoniaMNIST, and 500 of the ImageNet photos re-encoded at 300 px:
# the 107 MB originals do not fit). Both paths are git-ignored (.gitignore) and named in `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${SRC:-../shared/data}
../shared/tools/slim-ray-wheel.sh .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  jsonschema jsonschema-specifications referencing rpds-py
rm -rf shared/data/imagenet-samples && mkdir -p shared/data/imagenet-samples
cp "$SRC/pneumoniamnist.npz" shared/data/
${PYTHON:-.venv/bin/python} - "$SRC/imagenet-samples" shared/data/imagenet-samples <<'PY'
import sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(src.iterdir())[:500]:
    try:
        im = Image.open(f).convert("RGB")
    except Exception:
        continue
    im.thumbnail((300, 300))
    im.save(dst / (f.stem + ".jpg"), quality=85)
PY
du -sh .whl shared
