#!/usr/bin/env bash
# Install the suite and everything its tests need into the current Python environment.
# torch is pinned to the release the suite is tested with; on a GPU machine install the
# CUDA build of that release first (https://pytorch.org/get-started/) and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install "setuptools>=68" >/dev/null
python -c "import torch" 2>/dev/null || python -m pip install "torch==2.13.0"
# torch-scatter, torch-sparse and deepspeed compile against the installed torch: no build
# isolation, or pip would fetch another torch for the build. pip caches the built wheels.
python -m pip install --no-build-isolation -e ".[dev,pyg,workflow,profile]"
# STAR's fused CPU kernels, built now rather than by the first command that needs them (about 20 s on 2 cores,
# into TORCH_EXTENSIONS_DIR); where they cannot be built, the warning says why and STAR runs on its ATen forms.
python -c "from star.network import fused; fused.available()"
# The report's browser check (a slow test) opens it in headless Chromium: Debian's package, where apt-get can install it.
if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null \
        && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null
fi
