#!/usr/bin/env bash
# Storage-native finetuning (issue 13, section 1) on the default model, from a fresh clone.
# Three finetunes of results/default/model.safetensors for the same steps and data:
#   plain   lam 0, no quantizer in the loop (baseline b: more training, then post-hoc export)
#   lam0.3  straight-through SDClip int6 + 0.3 nats per bit/weight of code entropy
#   lam1    the same with lam 1.0
# then the same export (scalar RTN SDClip, clip_k searched to each budget, GPTQ int7 embedding, fair
# codec, 256 sampled windows) of each, and of the untouched model (baseline a), at 7 and 6 MB.
# The table (results/seeds/rate/table.md) pairs every model with the baselines by document bootstrap.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/seeds/rate
WORK=${WORK:-outputs/seeds/rate}   # the finetuned checkpoints and training state (not committed)
STEPS=${STEPS:-60}   # 60 × 4 × 1024 tokens: under one pass over the bundle's 262,144 train tokens
train() {  # name, overrides...
  local name=$1; shift
  bytegolf train data=default rate.init=results/default/model.safetensors rate.steps="$STEPS" \
    out="$WORK/$name" hydra.run.dir="$WORK/${name}_run" "$@"
  mkdir -p "$OUT/$name"
  cp "$WORK/$name/rate_train.json" "$WORK/$name/curve.png" "$WORK/${name}_run/train.log" "$OUT/$name/"
}
# (run at 3694561, before the tied embedding had its own setting in the loop: it was int6 k 12.85 too)
train plain rate.lam=0 rate.ste=false
train lam0.3 rate.lam=0.3 rate.embed_bits=6 rate.embed_clip_k=12.85
train lam1 rate.lam=1.0 rate.embed_bits=6 rate.embed_clip_k=12.85
for name in default plain lam0.3 lam1; do
  ckpt=$WORK/$name/model.safetensors
  [ "$name" = default ] && ckpt=results/default/model.safetensors
  bytegolf compare model.checkpoint="$ckpt" hydra.run.dir="$OUT/compare_$name" \
    'compare.formats=[scalar]' 'compare.references=[]' compare.allocated=null \
    'compare.budgets=[7000000,6000000]' compare.front_points=2
done
python -m bytegolf.study.crossmodel --out "$OUT" --baseline default --baseline plain \
  default="$OUT/compare_default" plain="$OUT/compare_plain" lam0.3="$OUT/compare_lam0.3" lam1="$OUT/compare_lam1"
