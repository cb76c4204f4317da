#!/usr/bin/env bash
# Codebook study (issue 3): scalar, clustered and additive at about 2, 3 and 4 nominal bits/weight on
# the default model; brotli-11 artifact plus zstd-19 bytes of the same streams; ClusComp calibration on/off.
# Writes one run directory per point under results/codebooks/runs/ and the table results/codebooks/table.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=results/codebooks/runs
common=("extra_codecs=[zstd]" "codec=brotli")
run() { name=$1; shift; bytegolf run "${common[@]}" "$@" "hydra.run.dir=$out/$name" || echo "FAILED $name"; }
# scalar: GPTQ, asymmetric min-max grid per group of 64 (the usual GPTQ setting), b + (16+b)/64 bits
for b in 2 3 4; do run scalar_${b}bit format=scalar format.bits=$b format.symmetric=false format.clip=max format.group_size=64 format.gptq=true; done
# clustered (ClusComp): d output channels per sub-vector, K centroids: log2(K)/d bits + codebook
run clustered_2bit format=clustered format.dim=4 format.codebook_size=256
run clustered_3bit format=clustered format.dim=2 format.codebook_size=64
run clustered_4bit format=clustered format.dim=2 format.codebook_size=256
run clustered_2bit_calibrated format=clustered format.dim=4 format.codebook_size=256 finetune.steps=100
# additive (AQLM): M codebooks of 2^8 over groups of g: M*8/g bits + codebooks + row scales
run additive_2bit format=additive format.num_codebooks=2 format.group_size=8
run additive_3bit format=additive format.num_codebooks=3 format.group_size=8
run additive_4bit format=additive format.num_codebooks=2 format.group_size=4
run additive_2bit_calibrated format=additive format.num_codebooks=2 format.group_size=8 finetune.steps=100
python -m bytegolf.tools.study_table "$out" > results/codebooks/table.md
cat results/codebooks/table.md
