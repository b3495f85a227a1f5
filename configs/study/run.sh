#!/usr/bin/env bash
# The whole study in one command (README, "Reproduce the paper"): every sweep in order, then the report.
# Resumable: each sweep skips the runs whose summary is in docs/reproduction/runs (so on a checkout with the
# committed summaries only the report is redone) and continues interrupted runs from their checkpoints;
# Ctrl-C checkpoints the run under way. Delete the summaries of a spec to train its runs again.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release
peerlm=target/release/peerlm
sweep() { "$peerlm" sweep --spec "configs/study/$1.json" --out runs/study --summaries docs/reproduction/runs; }
sweep tuning
python3 configs/study/isoflop_lr.py    # each method's learning rates per width, from the tuning runs
sweep isoflop
python3 configs/study/isoflop_seeds.py # two more seeds at the best size of each complete budget
sweep isoflop-seeds
sweep ablations
"$peerlm" report --summaries docs/reproduction/runs --out docs/REPRODUCTION.md
