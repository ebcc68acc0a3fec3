"""Shared fixtures.

The outputs of the official BEATs code (the oracle) are read from ``tests/data/oracle`` (set
BEATS_ORACLE_DIR to read another copy). Tests that read real audio from ``../shared/devdata``
skip, with a one-line reason, when that folder is absent (set BEATS_DEVDATA_DIR to point at it).
"""

import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
ORACLE = Path(os.environ.get("BEATS_ORACLE_DIR", REPO / "tests" / "data" / "oracle"))
DEVDATA = Path(os.environ.get("BEATS_DEVDATA_DIR", REPO.parent / "shared" / "devdata"))


TINY_BEATS = dict(embed_dim=32, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                  encoder_attention_heads=4, dropout=0.0, attention_dropout=0.0, conv_pos=16,
                  label_predictor_layers=1, codebook_size=64, codebook_dim=16)


def tiny_beats_model(**overrides):
    """A 2-layer, 64-wide ``BeatsModel`` (seed 0) for unit tests; ``overrides`` are BeatsConfig fields."""
    from omegaconf import OmegaConf

    from beats_fairseq.models.beats import BeatsConfig, BeatsModel

    torch.manual_seed(0)
    return BeatsModel(OmegaConf.structured(BeatsConfig(**{**TINY_BEATS, **overrides})))


def devdata_clips(seconds: float, first: int = 0) -> torch.Tensor:
    """(1, samples): devdata clips (1 s each) concatenated, from clip ``first`` on."""
    files = sorted(DEVDATA.glob("*/audio/*/*.flac"))
    need = int(seconds * 16000)
    parts, total = [], 0
    for path in files[first:]:
        wav, sr = sf.read(str(path), dtype="float32")
        assert sr == 16000
        parts.append(torch.from_numpy(wav))
        total += len(wav)
        if total >= need:
            break
    return torch.cat(parts)[:need].unsqueeze(0)


@pytest.fixture(scope="session")
def real_audio():
    """``real_audio(seconds, first=0)`` -> (1, samples) of real audio from ../shared/devdata.

    Tests that use it skip when devdata is absent and carry the ``devdata`` marker (so a run with
    devdata can select just them: ``-m devdata``)."""
    if not any(DEVDATA.glob("*/audio/*/*.flac")):
        pytest.skip(f"needs real audio: no devdata clips under {DEVDATA} (set BEATS_DEVDATA_DIR)")
    return devdata_clips


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "real_audio" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.devdata)


@pytest.fixture(scope="session")
def oracle():
    """Loader for the oracle files: ``oracle('inputs')`` -> dict."""
    if not ORACLE.is_dir():
        pytest.fail(f"oracle folder {ORACLE} not found: it ships with the repository (tests/data/oracle), "
                    "or set BEATS_ORACLE_DIR")

    def load(name):
        return torch.load(ORACLE / f"{name}.pt", weights_only=True)

    load.dir = ORACLE
    return load


def run_train(config_dir, config_name, *overrides, cwd=None, timeout=900):
    """Run ``fairseq-hydra-train`` in a subprocess; return its combined log (fails with the log)."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("fairseq-hydra-train")
    cmd = [str(exe), "--config-dir", str(config_dir), "--config-name", config_name, *overrides]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log[-6000:]}")
    return log


def assert_picture(path, min_width=400, min_height=300):
    """``path`` is a PNG of at least that size with real content (many distinct colours, not one flat fill)."""
    import numpy as np
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 10_000, path
    image = np.asarray(Image.open(path).convert("RGB"))
    height, width, _ = image.shape
    assert width >= min_width and height >= min_height, (path, width, height)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50, path  # curves, text, bars: not a blank canvas
    assert (image < 128).any(axis=2).mean() > 0.005, path  # some dark ink (text, lines)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The bundled demo corpus (small default size), generated once per test session."""
    from beats_fairseq.data.demo import generate_corpus

    out = tmp_path_factory.mktemp("demo_data")
    generate_corpus(str(out), num_train=120, num_valid=36, num_test=36, seconds=3.0, seed=0)
    return out


@pytest.fixture(scope="session")
def iter1_run(demo_data, tmp_path_factory):
    """A tiny iter1 pre-training run on the demo corpus: (save_dir, log), read-only for the tests.

    With parallel workers (pytest-xdist) it runs once for all of them: the first worker that needs it
    trains it under a lock in the folder the workers share, the others wait and read it."""
    import fcntl

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # every worker's basetemp lies in the same folder
    run_dir = shared / "iter1_run"
    with open(shared / "iter1_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        save_dir, log_file = run_dir / "checkpoints", run_dir / "train.log"
        if not log_file.is_file():  # written last: a run that failed is trained again, from scratch
            shutil.rmtree(run_dir, ignore_errors=True)
            log = run_train(
                REPO / "examples" / "beats_iter1", "tiny",
                f"task.data={demo_data}", f"checkpoint.save_dir={save_dir}",
                "optimization.max_update=160", "dataset.validate_interval_updates=80",
                "checkpoint.save_interval_updates=80", "common.log_interval=20",
            )
            log_file.write_text(log)
    return save_dir, log_file.read_text()
