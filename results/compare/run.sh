#!/usr/bin/env bash
# The committed ranking at 16, 8 and 4 MB: the compare's defaults (fair codec, 256 sampled windows in
# bf16, document bootstrap, pg_record's int8 embedding rule in every format's plan, the three reference
# exports at their own size and searched to each budget, alloc_gptq by expected loss) for the systems
# that fit a 2-core session: additive (5-6 min per probe) and clustered (minutes per probe) are left
# out, and so are the extra front points. Run from the repository root of a fresh clone. The allocated
# system goes first; the second command resumes the same directory and adds the rest.
set -euo pipefail
out=results/compare
budgets='compare.budgets=[16000000,8000000,4000000]'
bytegolf compare "$budgets" 'compare.formats=[]' 'compare.references=[]' compare.front_points=0 hydra.run.dir=$out
bytegolf compare "$budgets" 'compare.formats=[scalar_gptq,sparse_outlier,basis_delta,scalar_bits,scalar]' \
  compare.front_points=0 hydra.run.dir=$out
