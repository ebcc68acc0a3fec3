"""End to end: fine-tune the tiny iter1 model on the demo corpus with fairseq-hydra-train,
then reload the fine-tuned checkpoint in a new process without the pre-trained file."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, run_train

FINETUNE_UPDATES = 80  # 10 epochs of the 120-clip demo_data fixture


def valid_metrics(log):
    """Every validation line's ``{key: value}`` (floats), in order."""
    out = []
    for line in log.splitlines():
        if "| valid on 'valid' subset |" in line:
            fields = dict(re.findall(r"\| (\w+) ([-\d.]+)", line))
            out.append({k: float(v) for k, v in fields.items()})
    return out


RELOAD = r"""
import json, sys, torch
import beats_fairseq
from fairseq import checkpoint_utils
path, data = sys.argv[1], sys.argv[2]
models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
a = models[0].eval()
b = beats_fairseq.load(path)
ds = task.build_labelled_dataset("test", num_classes=a.cfg.num_classes)
batch = ds.collater([ds[i] for i in range(8)])
with torch.no_grad():
    la, _ = a(**batch["net_input"])
    lb, _ = b(**batch["net_input"])
print(json.dumps({
    "same": bool(torch.equal(la, lb)), "names": b.class_names, "multilabel": bool(b.cfg.multilabel),
    "pretrained_path": b.cfg.pretrained_path, "layers": int(b.cfg.encoder_layers),
    "task": type(task).__name__, "probs_sum": float(b.probabilities(lb).sum(-1).mean()),
}))
"""


@pytest.mark.slow
def test_finetune_from_iter1_learns_and_reloads(iter1_run, demo_data, tmp_path):
    save_dir, _ = iter1_run
    pretrained = tmp_path / "iter1.pt"  # a copy we delete before reloading
    shutil.copy(save_dir / "checkpoint_last.pt", pretrained)
    ft_dir = tmp_path / "ft" / "checkpoints"
    log = run_train(
        REPO / "examples" / "beats_finetune", "tiny",
        f"task.data={demo_data}", f"model.pretrained_path={pretrained}", f"checkpoint.save_dir={ft_dir}",
        f"optimization.max_update={FINETUNE_UPDATES}", "common.log_interval=8", "dataset.validate_interval=5",
    )
    assert f"model.pretrained_path: backbone from {pretrained}" in log
    valid = valid_metrics(log)
    assert valid, log[-3000:]
    assert valid[-1]["accuracy"] >= 0.45, f"valid accuracy {valid[-1]} (chance 1/6)"
    assert valid[-1]["best_accuracy"] == max(v["accuracy"] for v in valid)

    pretrained.unlink()
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(ft_dir / "checkpoint_best.pt"), str(demo_data)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same"] and out["task"] == "BeatsAudioClassificationTask"
    assert out["names"] == ["Harmonic tone", "Up-chirp", "Down-chirp", "Noise burst", "Click train", "AM tone"]
    assert out["multilabel"] is False and out["layers"] == 2 and out["pretrained_path"] == str(pretrained)
    assert out["probs_sum"] == pytest.approx(1.0, abs=1e-5)  # softmax outputs
