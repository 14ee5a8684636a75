#!/usr/bin/env bash
# Accept a GPU machine: see benchmarks/gpu_acceptance.py for what is checked. CI runs it as
#   bash benchmarks/gpu_acceptance.sh --device cpu --quick
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_acceptance.py "$@"
