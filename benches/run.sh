#!/usr/bin/env bash
# One command for the side-by-side benchmark: installs what it needs, builds release binaries,
# runs the peers and Weir alternately, writes benches/results/. Pass --quick for a short run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash benches/setup.sh
exec python3 benches/run.py "$@"
