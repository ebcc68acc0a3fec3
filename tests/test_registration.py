"""Registration with fairseq: only ``beats_*`` names, none shadowed, whichever of the package and
fairseq is imported first (``beats_fairseq/import_hook.py``), and through ``common.user_dir``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

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
        "optimizer": ["beats_adam", "beats_composite"],
        "lr_scheduler": [],
    }
    assert all(names == [] for names in result["replaced"].values())


def run_python(code: str, *args, cwd=None) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_package_imports_neither_torch_nor_fairseq():
    result = run_python(
        "import json, sys\n"
        "import beats_fairseq\n"
        "heavy = sorted(m for m in ('torch', 'fairseq', 'numpy', 'omegaconf') if m in sys.modules)\n"
        "load = beats_fairseq.load  # first use imports loading (and so fairseq) and registers\n"
        "from fairseq.tasks import TASK_REGISTRY\n"
        "print(json.dumps({'heavy': heavy, 'load': load.__module__, 'tasks': sorted(TASK_REGISTRY)}))\n")
    assert result["heavy"] == [] and result["load"] == "beats_fairseq.loading"
    assert "beats_pretraining" in result["tasks"]


# How a session may start: the package first, fairseq first, or a module of the package that imports fairseq.
FIRST = {
    "package": "import beats_fairseq",
    "fairseq": "import fairseq\nimport beats_fairseq",
    "submodule": "from beats_fairseq.models.beats_classifier import BeatsClassifierModel",
}
LOAD = """
import json, sys
{first}
from fairseq import checkpoint_utils
models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([sys.argv[1]])
print(json.dumps({{"model": type(models[0]).__name__, "task": type(task).__name__}}))
"""


@pytest.fixture(scope="module")
def converted_classifier(tmp_path_factory):
    """A tiny classifier checkpoint in the fairseq format, with no ``common.user_dir``."""
    import torch

    from beats_fairseq.cli.convert import fairseq_checkpoint
    from beats_fairseq.models.beats_classifier import BeatsClassifierConfig, BeatsClassifierModel

    torch.manual_seed(0)
    cfg = BeatsClassifierConfig(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                                encoder_attention_heads=2, conv_pos=16, conv_pos_groups=4, num_classes=3)
    path = tmp_path_factory.mktemp("converted") / "classifier.pt"
    state = fairseq_checkpoint(BeatsClassifierModel(cfg).eval(), "test")
    assert state["cfg"]["common"]["user_dir"] is None
    torch.save(state, path)
    return path


@pytest.mark.parametrize("first", sorted(FIRST))
def test_checkpoint_utils_loads_a_checkpoint_whichever_is_imported_first(first, converted_classifier):
    result = run_python(LOAD.format(first=FIRST[first]), converted_classifier)
    assert result == {"model": "BeatsClassifierModel", "task": "BeatsPretrainingTask"}


HOOK_FILES = {
    "dep/__init__.py": "VALUE = 1\n",
    "pkg/__init__.py": ("from beats_fairseq.import_hook import when_imported\n"
                        "calls = []\n"
                        "def _register():\n"
                        "    from . import registry  # needs pkg.core whole\n"
                        "    calls.append(registry.NAME)\n"
                        "when_imported('dep', _register, __name__)\n"),
    "pkg/core.py": "import dep\nNAME = 'core'\n",
    "pkg/registry.py": "from .core import NAME\n",
}
HOOK = """
import json, sys
{first}
import pkg
registered_before_dep = list(pkg.calls)
import dep, pkg.core, pkg.registry
print(json.dumps({{"before": registered_before_dep, "calls": pkg.calls,
                  "hooks": [f.name for f in sys.meta_path if type(f).__module__ == "beats_fairseq.import_hook"],
                  "loader": type(pkg.core.__loader__).__name__, "spec_loader": type(pkg.core.__spec__.loader).__name__}}))
"""


@pytest.mark.parametrize("first, before", [("", []), ("import dep", ["core"]), ("import pkg.core", ["core"])])
def test_when_imported_calls_once_and_never_inside_a_half_run_module(tmp_path, first, before):
    """``pkg`` registers when ``dep`` is imported; ``pkg.core`` imports ``dep`` and registering imports
    ``pkg.core``: when ``pkg.core`` comes first, registering waits until it is whole."""
    for name, text in HOOK_FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    code = f"import sys\nsys.path[:0] = [{str(tmp_path)!r}, {str(REPO)!r}]\n" + HOOK.format(first=first)
    result = run_python(code)
    assert result["before"] == before and result["calls"] == ["core"]
    assert result["hooks"] == ["fairseq"]  # pkg's is gone once it has fired; beats_fairseq's still waits
    assert result["loader"] == result["spec_loader"] == "SourceFileLoader"


@pytest.mark.slow
def test_fairseq_hydra_train_registers_through_the_user_dir(tmp_path):
    """The tiny iter1 recipe trains (``common.user_dir`` makes fairseq import the package), and its
    checkpoint loads through ``checkpoint_utils`` in a session that imported only the package."""
    from conftest import run_train

    from beats_fairseq.data.demo import generate_corpus

    data, save = tmp_path / "data", tmp_path / "checkpoints"
    generate_corpus(str(data), num_train=16, num_valid=8, num_test=8, seconds=1.0, seed=0, multi_ratio=0)
    run_train(REPO / "examples" / "beats_iter1", "tiny", f"task.data={data}", f"checkpoint.save_dir={save}",
              "optimization.max_update=2", "dataset.disable_validation=true", "checkpoint.save_interval_updates=2",
              "common.log_interval=1")
    result = run_python(LOAD.format(first=FIRST["package"]), save / "checkpoint_last.pt", cwd=tmp_path)
    assert result == {"model": "BeatsModel", "task": "BeatsPretrainingTask"}
