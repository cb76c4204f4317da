#!/usr/bin/env bash
# Mixed precision (`bytegolf allocate`) vs uniform scalar at equal bytes on the default model:
# scalar RTN (SDClip k = 12.85), one of bits 2..8 per block matrix / embedding, zstd level 12,
# budgets 8,000,000 and 6,000,000 B; the uniform points are compare's clip_k search at bits = 6.
set -euo pipefail
cd "$(dirname "$0")/../.."
for budget in 8000000 6000000; do
  nice -n 19 bytegolf allocate budget.cap_bytes=$budget format=scalar codec=zstd codec.level=12 \
    'allocate.candidates=[{bits:2},{bits:3},{bits:4},{bits:5},{bits:6},{bits:7},{bits:8}]' \
    hydra.run.dir=results/allocate/alloc_$budget
done
nice -n 19 bytegolf compare 'compare.formats=[scalar]' 'compare.budgets=[8000000,6000000]' codec=zstd codec.level=12 \
  hydra.run.dir=results/allocate/uniform
nice -n 19 python results/allocate/table.py > results/allocate/table.md
cat results/allocate/table.md
