#!/bin/sh
# Paired rounds of the tiny GPT training step against PyTorch, in one window (docs/PERFORMANCE.md, session 8):
# each round runs peerlm's `gpt` bench, then `gpt_torch.py --opt fused`, for the dense model and for PEER in
# block 2, back to back. Run it with nothing else on the machine; compare medians of the rounds.
#
#   benches/paired_gpt.sh [ROUNDS] [PYTHON]     (defaults: 3 rounds, python3, which must import torch)
#
# The dense step's FLOPs are 28.31 M per token (`model::flops`, attention over the full context): at 2 cores'
# AVX2 FMA peak (`shared/reference/peakflops.c`), tokens/s × 28.31e6 / peak is the utilisation.
set -eu
rounds=${1:-3}
python=${2:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
reference="$here/../shared/reference"
"$python" -c 'import torch' || { echo "no torch in $python: pip install torch (see $reference/README.md)"; exit 1; }
cd "$here"
cargo bench --bench gpt --no-run
for round in $(seq "$rounds"); do
    echo "== round $round"
    cargo bench --bench gpt -- dense
    (cd "$reference" && "$python" gpt_torch.py --threads 2 --opt fused)
    cargo bench --bench gpt -- peer
    (cd "$reference" && "$python" gpt_torch.py --threads 2 --opt fused --peer-layers 2)
done
