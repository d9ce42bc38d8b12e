#!/usr/bin/env bash
# The GPU check, one call on a CUDA machine with no network whose Python holds a recent torch,
# transformers and peft: installs the wheels scripts/gather-gpu-wheels.sh gathered (ftkit's other
# needs: trl, datasets, bitsandbytes, unsloth, papermill, huey...) into a side folder, then runs
# bench/gpu.py: the four training variants (unsloth and transformers + peft, LoRA and QLoRA, with
# gradient checkpointing on in each) and two real jobs through `ftkit worker` and a papermill
# kernel (backend "auto" and "hf"), each with its phases and whether its report (notebook and
# HTML) and adapter landed. Prints the tables and writes them as JSON. Sized to finish in under
# 6 minutes on one H200.
#
#   scripts/gpu-check.sh [bench/gpu.py options]     e.g. --steps 20
#   scripts/gpu-check.sh --smoke                    the same, on this machine's CPU, tiny model
#   FTKIT_GPU_WHEELS=DIR   the wheels (default .whl)   FTKIT_GPU_JSON=FILE   (default $OUT or ., gpu-bench.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${FTKIT_GPU_WHEELS:-.whl}
SITE=${FTKIT_GPU_SITE:-/tmp/ftkit-gpu-site}
SMOKE=""
if [ "${1:-}" = "--smoke" ]; then  # the CPU run CI makes, so that this script cannot rot
  SMOKE=1
  export CUDA_VISIBLE_DEVICES=""
fi
OUTDIR=${OUT:-${SMOKE:+/tmp}}
JSON=${FTKIT_GPU_JSON:-${OUTDIR:-.}/gpu-bench.json}
started=$(date +%s)

if [ -z "$SMOKE" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE in $(($(date +%s) - started)) s"
else
  [ -n "$SMOKE" ] || echo "no wheels in $WHEELS: running with what is installed" >&2
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# nothing outside the machine can be reached: fail fast rather than wait on the hub
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "no nvidia-smi here${SMOKE:+ (--smoke: the CPU run)}"
fi
"$PY" - <<'PY'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
for name in ("transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "unsloth",
             "unsloth_zoo", "papermill", "nbconvert", "huey"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} not installed")
PY
timeout "${FTKIT_GPU_CHECK_SECONDS:-340}" "$PY" bench/gpu.py --json "$JSON" "$@"
echo "gpu-check: $(($(date +%s) - started)) s in all; JSON in $JSON"
