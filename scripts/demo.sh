#!/usr/bin/env bash
# Set everything up and run the main job: iter1 BEATs pre-training (random-projection
# tokenizer, masked audio modelling) of a tiny model on the bundled demo corpus, on CPU.
# Extra arguments are passed to fairseq-hydra-train as overrides, e.g.
#   bash scripts/demo.sh optimization.max_update=100
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
if [ ! -f demo_data/train.tsv ]; then
  beats-make-demo-data --out demo_data
fi
rm -rf runs/beats_iter1_tiny
fairseq-hydra-train --config-dir examples/beats_iter1 --config-name tiny \
  task.data=demo_data checkpoint.save_dir=runs/beats_iter1_tiny/checkpoints "$@" 2>&1 | tee runs_iter1_tiny.log
mkdir -p runs/beats_iter1_tiny && mv runs_iter1_tiny.log runs/beats_iter1_tiny/train.log
python - <<'PY'
import torch, beats_fairseq
model = beats_fairseq.load("runs/beats_iter1_tiny/checkpoints/checkpoint_last.pt")
features, _ = model.extract_features(torch.zeros(1, 48000))
print(f"[demo] checkpoint reloads with beats_fairseq.load: features {tuple(features.shape)}")
PY
echo "[demo] done: checkpoints in runs/beats_iter1_tiny/checkpoints, log in runs/beats_iter1_tiny/train.log"
