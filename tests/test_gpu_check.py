"""benchmarks/gpu_check.sh in its CPU smoke mode (``--device cpu --tiny``): every step runs and passes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_mode(oracle, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    cmd = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--oracle", str(oracle.dir),
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    steps = report["steps"]
    assert set(steps) == {"parity_fp32", "bf16_features", "attention", "training", "throughput"}
    assert all(step["status"] == "pass" for step in steps.values())
    assert steps["parity_fp32"]["gradients"]["gradients"] <= 1
    paths = steps["attention"]["encoder_paths"]
    assert paths["flex"]["fp32"]["output_rel_diff"] < 1e-4 and paths["sdpa_default"]["fp32"]["gradient_rel_diff"] < 1e-4
    assert set(steps["training"]["runs"]) == {"iter1_bf16", "tokenizer_bf16", "iter2_bf16", "finetune_bf16"}
    assert all(len(run["losses"]) >= 2 for run in steps["training"]["runs"].values())
    variants = steps["throughput"]["train_sdpa"]["variants"]
    assert set(variants) == {"iter1", "iter2_precomputed", "iter1_masks", "finetune"}
    assert all(v["mfu"] > 0 for v in variants.values()) and steps["throughput"]["inference_sdpa"]["mfu"] > 0
    assert (tmp_path / "gpu_pretrain_step_cpu_sdpa.json").is_file() and (tmp_path / "logs" / "iter1_bf16.log").is_file()
    assert "step" in proc.stdout and "iter1_bf16" in proc.stdout  # the table


def test_gpu_check_names_missing_packages_and_the_fix(tmp_path):
    """A Python without fairseq and no --wheels: a one-line error that names --wheels."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # -S: no site-packages, so no fairseq
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHON=str(fake)))
    assert proc.returncode == 2
    assert "lacks: fairseq" in proc.stderr and "--wheels DIR" in proc.stderr
