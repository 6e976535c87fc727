#!/usr/bin/env bash
# One-shot GPU benchmark, for a machine without network (about 8-10 minutes on one H100/H200):
#   1. installs the wheels in .whl/ (scripts/fetch_device_wheels.sh) whose package the image lacks;
#   2. for d12 and d20, and d24 of the nanochat-2026 recipe (d24-2026: sliding windows through cuDNN's local
#      window, value embeddings, its 32,768-token vocabulary), bf16, T 2048, the largest device batch that fits
#      (32, else 16, else 8): XLA's memory analysis, compile time, tokens/s, MFU against the device's bf16 peak
#      (FLOPs counting the windows), peak device memory;
#   3. the PyTorch reference (same optimizer) on the same GPU and shapes, in its own process, and the ratio (the
#      reference is the onanchat-2025 model: none for the 2026 recipe);
#   4. decode tokens/s of the engine (scripts/bench_decode.py) for d20.
#
#     bash scripts/device_bench.sh                     # on the GPU machine, from the repository root
#     DEVICE_BENCH_MODELS="d24-2026" bash scripts/device_bench.sh   # some of the models only (d12 d20 d24-2026)
#     DEVICE_BENCH_SMALL=1 bash scripts/device_bench.sh   # tiny shapes, any machine (checks the script)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
start=$SECONDS
stamp() { echo "== [$((SECONDS - start))s] $*"; }

stamp "install missing wheels from .whl/"
if compgen -G ".whl/*.whl" > /dev/null; then
  missing=$("$PY" - <<'PY'
import glob, importlib.metadata as md, os
for whl in sorted(glob.glob(".whl/*.whl")):
    name = os.path.basename(whl).split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(whl)
PY
)
  if [ -n "$missing" ]; then
    echo "installing: $(echo $missing | xargs -n1 basename | tr '\n' ' ')"
    "$PY" -m pip install --quiet --no-deps --no-index $missing || echo "wheel install failed; continuing"
  else
    echo "every package in .whl/ is already installed"
  fi
else
  echo "no .whl/ folder: run scripts/fetch_device_wheels.sh on a machine with the registry first"
fi

stamp "versions"
"$PY" - <<'PY'
import importlib.metadata as md, platform
import jax

def version(p):
    try:
        return md.version(p)
    except md.PackageNotFoundError:
        return "absent"

names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "grain", "tiktoken")
print(f"python {platform.python_version()}; " + ", ".join(f"{p} {version(p)}" for p in names))
print("devices:", jax.devices())
PY
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ -n "${DEVICE_BENCH_SMALL:-}" ]; then
  models=(small small-2026)
  common=(--config default model.sequence_len=128 model.compute_dtype=bfloat16 model.loss_chunk=256)
  batches=(8 4)
  steps=2
  declare -A limit=([small]=300 [small-2026]=300 [torch]=300 [decode]=300)
  decode=(--config default --batch 1 --prompt 8 --new 16 --repeats 1 --no-torch)
else
  read -r -a models <<< "${DEVICE_BENCH_MODELS:-d12 d20 d24-2026}"
  common=(model.sequence_len=2048 model.compute_dtype=bfloat16 tokenizer.vocab_size=65536)
  batches=(32 16 8)
  steps=5
  # seconds per stage (worst case 12.5 minutes in all; a typical run takes well under 10; where one command may run
  # 10 minutes at most, run DEVICE_BENCH_MODELS="d12 d20" and then DEVICE_BENCH_MODELS=d24-2026)
  declare -A limit=([d12]=120 [d20]=180 [d24-2026]=150 [torch]=100 [decode]=100)
  decode=(--config model/d20 model.compute_dtype=bfloat16 tokenizer.vocab_size=65536 --batch 1 32 --prompt 128
          --new 256 --repeats 3 --no-torch)
fi

for m in "${models[@]}"; do
  recipe=()  # overrides after the common ones: a 2026-recipe model (its vocabulary too)
  case "$m" in
    small) cfg=() ;;
    small-2026) cfg=(); recipe=(model.recipe=nanochat-2026) ;;
    d*-2026) d=${m%-2026}; cfg=(--config model/d20 "model.depth=${d#d}")
             recipe=(model.recipe=nanochat-2026 tokenizer.vocab_size=32768) ;;
    *) cfg=(--config "model/$m") ;;
  esac
  stamp "revjax train step, $m"
  log=$(mktemp)
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 timeout "${limit[$m]}" "$PY" scripts/bench_train.py "${cfg[@]}" "${common[@]}" \
    "${recipe[@]}" --fit-batch "${batches[@]}" --steps "$steps" 2>&1 | grep -v "^WARNING" | tee "$log"
  batch=$(sed -n 's/^batch: device batch \([0-9]*\),.*/\1/p' "$log" | tail -1)
  ours=$(sed -n 's/^revjax: .* \([0-9,]*\) tok\/s .*/\1/p' "$log" | tail -1 | tr -d ,)
  if [ -z "$batch" ]; then echo "revjax $m: no result"; continue; fi
  if [ "${#recipe[@]}" -gt 0 ]; then
    echo "pytorch reference: onanchat-2025's model only, none for $m"; rm -f "$log"; continue
  fi
  T=$(sed -n 's/.*T=\([0-9]*\),.*/\1/p' "$log" | tail -1)
  stamp "pytorch reference, $m, device batch $batch"
  timeout "${limit[torch]}" "$PY" scripts/bench_train.py "${cfg[@]}" "${common[@]}" --torch-only --steps "$steps" \
    training.device_batch_size="$batch" training.total_batch_tokens=$((batch * T)) 2>&1 | grep -v "^WARNING" \
    | tee "$log"
  theirs=$(sed -n 's/^pytorch: .* \([0-9,]*\) tok\/s .*/\1/p' "$log" | tail -1 | tr -d ,)
  [ -n "$ours" ] && [ -n "$theirs" ] && \
    echo "revjax/pytorch throughput ratio ($m): $("$PY" -c "print(f'{$ours / $theirs:.2f}')")"
  rm -f "$log"
done

stamp "decode"
timeout "${limit[decode]}" "$PY" scripts/bench_decode.py "${decode[@]}" 2>&1 | grep -v "^WARNING"
stamp "done"
