#!/usr/bin/env bash
# The ranking below 2 bits per weight, where the formats separate: `bytegolf compare` with every default
# (fair codec, 256 sampled windows in bf16, document bootstrap with Holm, pg_record's int8 embedding rule
# in every format's plan, the three references at their own size with pg_record and pg_top searched,
# scalar / scalar_gptq / sparse_outlier on its base's clip / basis_delta on its residual's clip /
# alloc_gptq) at 4, 3 and 2 MB instead of the default 16, 4, 3 and 2 MB (16 MB: results/compare).
# Run from the repository root of a fresh clone set up as the README says; OUT defaults to
# outputs/compare/low.
set -euo pipefail
out=${1:-outputs/compare/low}
bytegolf compare 'compare.budgets=[4000000,3000000,2000000]' hydra.run.dir="$out"
bytegolf report "$out"
