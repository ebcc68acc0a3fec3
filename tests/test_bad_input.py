"""Bad audio in a pre-training manifest: documented behaviour, never a crash or a NaN loss."""

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, run_train


def make_bad_corpus(root, demo_data):
    """Good demo clips plus one of each kind of bad file."""
    from beats_fairseq.data.manifest import read_manifest, write_manifest

    good = read_manifest(str(demo_data / "train.tsv"))
    rows = [(good.abspath(i), int(good.sizes[i])) for i in range(24)]
    rng = np.random.default_rng(0)
    sf.write(root / "stereo_44k.wav", 0.1 * rng.standard_normal((44100 * 3, 2)), 44100)
    sf.write(root / "short.wav", 0.1 * rng.standard_normal(1000), 16000)
    sf.write(root / "empty.wav", np.zeros(0), 16000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    rows += [(str(root / "stereo_44k.wav"), 132300), (str(root / "short.wav"), 1000),
             (str(root / "empty.wav"), 48000), (str(root / "corrupt.wav"), 48000),
             (str(root / "missing.wav"), 48000)]
    for split in ("train", "valid"):
        write_manifest(str(root / f"{split}.tsv"), "/", [(p.lstrip("/"), n) for p, n in rows])
    return root


@pytest.mark.slow
def test_bad_files_are_skipped_with_one_line_each(tmp_path, demo_data):
    data = make_bad_corpus(tmp_path, demo_data)
    log = run_train(
        REPO / "examples" / "beats_iter1", "tiny", f"task.data={data}",
        f"checkpoint.save_dir={tmp_path / 'ckpt'}", "optimization.max_update=6",
        "dataset.validate_interval_updates=3", "checkpoint.save_interval_updates=3",
        "dataset.batch_size=8", "common.log_interval=1",
    )
    assert "short.wav" in log  # dropped at load (shorter than one patch)
    for name in ("empty.wav", "corrupt.wav", "missing.wav"):
        assert name in log, name
    assert "stereo_44k.wav" not in log  # resampled and down-mixed, no complaint
    assert "nan" not in log.lower().replace("finite", "")
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()


@pytest.mark.slow
def test_fail_policy_names_the_file(tmp_path, demo_data):
    import subprocess
    import sys
    from pathlib import Path

    data = make_bad_corpus(tmp_path, demo_data)
    exe = Path(sys.executable).with_name("fairseq-hydra-train")
    proc = subprocess.run(
        [str(exe), "--config-dir", str(REPO / "examples" / "beats_iter1"), "--config-name", "tiny",
         f"task.data={data}", f"checkpoint.save_dir={tmp_path / 'ckpt'}", "task.bad_audio=fail",
         "optimization.max_update=4", "dataset.batch_size=64"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert any(name in tail for name in ("empty.wav", "corrupt.wav", "missing.wav")), tail
