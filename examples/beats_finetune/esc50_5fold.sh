#!/usr/bin/env bash
# ESC-50 5-fold cross-validation: one esc50.yaml run per fold, then the mean accuracy.
#
#   examples/beats_finetune/esc50_5fold.sh DATA PRETRAINED OUT [hydra overrides...]
#
# DATA is the --out folder of `beats-manifest esc50`: DATA/fold{K}/ holds train.tsv/.lbl (the
# four other folds), valid.tsv/.lbl (fold K) and labels.csv. Fold K is written to
# OUT/fold{K}/checkpoints. After an interruption, re-running resumes every fold from its
# checkpoint_last.pt (fairseq's checkpoint.restore_file). The reported number is the mean
# over folds of the final accuracy (average_folds.py).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 DATA PRETRAINED OUT [hydra overrides...]" >&2
  exit 2
fi
DATA=$1; PRETRAINED=$2; OUT=$3; shift 3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for k in 1 2 3 4 5; do
  fairseq-hydra-train --config-dir "$HERE" --config-name esc50 task.data="$DATA/fold$k" \
    model.pretrained_path="$PRETRAINED" checkpoint.save_dir="$OUT/fold$k/checkpoints" "$@"
done
python "$HERE/average_folds.py" "$OUT"/fold{1,2,3,4,5}/checkpoints/checkpoint_last.pt
