#!/usr/bin/env bash
# One command for the side-by-side benchmarks: installs what they need, builds release binaries and
# the benchmark's wasm filters, runs the peers and Weir alternately, and writes benches/results/
# (README.md summary, one table per scenario, chart.svg). --quick: under 5 minutes; full: under 30.
# Other arguments go to benches/run.py (--only tls,memory, --skip hotswap, --rounds N, --seconds S).
set -euo pipefail
cd "$(dirname "$0")/.."
bash benches/setup.sh
exec python3 benches/run.py "$@"
