#!/usr/bin/env bash
# Download the CPython 3.12 wheels that a GPU machine without network needs to run scripts/device_bench.sh
# (its image has jax, flax, optax, orbax, torch, tiktoken and h5py, not grain, rustbpe or what grain pulls in).
# Wheels land in .whl/ (ignored by git); scripts/device_bench.sh installs those whose package is missing there.
#
#     bash scripts/fetch_device_wheels.sh [DEST]        # DEST defaults to .whl
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
mkdir -p "$dest"
pip="${PIP:-.venv/bin/pip}"
# grain and its own requirements that orbax/flax do not bring; the data path's parquet reader and progress bars;
# rustbpe for the tokenizer. Pinned to what the project is tested with.
packages=(
  grain==0.2.18 array-record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0 psutil==7.2.2
  rustbpe==0.1.0 pyarrow==26.0.1 tqdm==4.70.1 prometheus-client==0.26.0
)
"$pip" download --quiet --dest "$dest" --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any "${packages[@]}"
ls -l "$dest"
du -sh "$dest"
