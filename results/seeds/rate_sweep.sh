#!/usr/bin/env bash
# The λ front and the QAT-only control for storage-native finetuning (issue 13, section 1), from a
# fresh clone: two more finetunes of results/default/model.safetensors like lam0.3_e7 (60 steps,
# the embedding in the loop at its export setting, int7 k 14), exported and compared like
# results/seeds/rate.sh; then the table and front of every model.
#   qat_e7   λ 0: straight-through quantizer in the loop, no rate term (quantization-aware only)
#   lam1_e7  λ 1.0
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/seeds/rate
WORK=${WORK:-outputs/seeds/rate}
for spec in "qat_e7 rate.lam=0.0" "lam1_e7 rate.lam=1.0"; do
  set -- $spec; name=$1; shift
  bytegolf train data=default rate.init=results/default/model.safetensors rate.steps=60 "$@" \
    out="$WORK/$name" hydra.run.dir="$WORK/${name}_run"
  mkdir -p "$OUT/$name"
  cp "$WORK/$name/rate_train.json" "$WORK/$name/curve.png" "$WORK/${name}_run/train.log" "$OUT/$name/"
  bytegolf compare model.checkpoint="$WORK/$name/model.safetensors" hydra.run.dir="$OUT/compare_$name" \
    'compare.formats=[scalar]' 'compare.references=[]' compare.allocated=null \
    'compare.budgets=[7000000,6000000]' compare.front_points=2
done
python -m bytegolf.crossmodel --out "$OUT" --baseline default --baseline plain \
  default="$OUT/compare_default" plain="$OUT/compare_plain" lam0.3="$OUT/compare_lam0.3" lam1="$OUT/compare_lam1" \
  qat_e7="$OUT/compare_qat_e7" lam0.3_e7="$OUT/compare_lam0.3_e7" lam1_e7="$OUT/compare_lam1_e7"
