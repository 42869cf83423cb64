#!/usr/bin/env bash
# Runs the whole test suite (unit, service, end-to-end, deploy) on the CPU: what CI and the README run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then . .venv/bin/activate; fi
# DeepSpeed compiles its CPU ops once per environment; keep them beside the venv, not in ~/.cache.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-"$VIRTUAL_ENV/torch_extensions"}
export TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec python -m pytest "$@"
