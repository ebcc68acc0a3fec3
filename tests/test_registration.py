"""Importing beats_fairseq registers only ``beats_*`` names with fairseq, and shadows none."""

import json
import subprocess
import sys

SNAPSHOT = r"""
import json
from fairseq.criterions import CRITERION_REGISTRY
from fairseq.models import MODEL_REGISTRY
from fairseq.optim import OPTIMIZER_REGISTRY
from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
from fairseq.tasks import TASK_REGISTRY

registries = {"task": TASK_REGISTRY, "model": MODEL_REGISTRY, "criterion": CRITERION_REGISTRY,
              "optimizer": OPTIMIZER_REGISTRY, "lr_scheduler": LR_SCHEDULER_REGISTRY}
before = {k: dict(v) for k, v in registries.items()}
import beats_fairseq  # noqa: E402,F401
added = {k: sorted(set(v) - set(before[k])) for k, v in registries.items()}
replaced = {k: sorted(n for n in before[k] if v[n] is not before[k][n]) for k, v in registries.items()}
print(json.dumps({"added": added, "replaced": replaced}))
"""


def test_registered_names_start_with_beats_and_shadow_nothing():
    out = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    added = result["added"]
    assert added == {
        "task": ["beats_audio_classification", "beats_pretraining", "beats_tokenizer_training"],
        "model": ["beats", "beats_classifier", "beats_encoder", "beats_tokenizer"],
        "criterion": ["beats_classification", "beats_mam", "beats_tokenizer_distillation"],
        "optimizer": ["beats_composite"],
        "lr_scheduler": [],
    }
    assert all(names == [] for names in result["replaced"].values())
