#!/usr/bin/env bash
# Structure study (issue 4) on the default model, zstd-12, 64 evaluation windows.
# 1. exceptions: sparse_outlier (RTN int4 SDClip k=4 base, Hessian-selected exceptions) with fine,
#    row, column and 16x16-block exceptions, each searched on its fraction knob to two equal budgets.
# 2. basis: basis_delta (whitened shared basis per family, int8 basis/coefficients, GPTQ int3
#    residual; and without residual) against scalar RTN and GPTQ int6 at equal final bytes.
set -euo pipefail
cd "$(dirname "$0")/../.."
bytegolf compare hydra.run.dir=results/structure/exceptions \
  'compare.formats=[fine,rows,columns,blocks]' 'compare.budgets=[7500000,9000000]' \
  '+compare.variants={fine: {format: sparse_outlier, params: {layout: fine}}, rows: {format: sparse_outlier, params: {layout: row}}, columns: {format: sparse_outlier, params: {layout: column}}, blocks: {format: sparse_outlier, params: {layout: block}}}'
bytegolf report results/structure/exceptions
bytegolf compare hydra.run.dir=results/structure/basis \
  'compare.formats=[basis_delta,basis_only,scalar,scalar_gptq]' 'compare.budgets=[8000000,6000000]' \
  '+compare.variants={basis_only: {format: basis_delta, params: {residual: null}}, scalar_gptq: {format: scalar, params: {gptq: true}}}'
bytegolf report results/structure/basis
# 3. the same at 8 MB with the tied embedding kept at int8 (a mixed plan, as Parameter Golf's records do)
bytegolf compare hydra.run.dir=results/structure/basis_emb8 \
  'compare.formats=[basis_delta,sparse_outlier,scalar_gptq]' 'compare.budgets=[8000000]' \
  '+compare.variants={scalar_gptq: {format: scalar, params: {gptq: true}}}' \
  'plan.rules=[{match: tok_emb.weight, format: scalar, params: {bits: 8, clip: percentile}}]'
bytegolf report results/structure/basis_emb8
