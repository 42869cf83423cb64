#!/usr/bin/env bash
# Runs the main job, `rlfleet up` (extra arguments pass through), in the environment scripts/install.sh installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then . .venv/bin/activate; fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-"$VIRTUAL_ENV/torch_extensions"}
exec rlfleet up "$@"
