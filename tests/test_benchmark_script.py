"""Smoke tests of the scripts in benchmarks/ (tiny sizes, one repeat; nothing is timed here)."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_mfu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("encoder_mfu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_json(bench, tmp_path):
    path = tmp_path / "result.json"
    args = ["--tiny", "--batch", "2", "--seconds", "1", "--repeats", "1", "--warmup", "0",
            "--threads", "1", "--matmul-size", "64", "--json", str(path)]
    result = bench.main(args)
    data = json.loads(path.read_text())
    for key in ("date", "device", "dtype", "torch_version", "threads", "cpu_model", "batch", "seconds", "params",
                "gflop_per_clip", "seconds_per_batch", "clips_per_s", "achieved_gflops", "matmul_gflops", "mfu",
                "breakdown_s", "history"):
        assert key in data, key
    assert data["device"] == "cpu" and data["dtype"] == "float32" and data["threads"] == 1
    assert data["batch"] == 2 and data["tiny"] is True
    assert data["params"] == result["params"] > 0
    assert data["mfu"] > 0 and data["seconds_per_batch"] > 0
    assert set(data["breakdown_s"]) >= {"fbank", "pos_conv", "attention", "ffn_norm_residual"}
    assert len(data["history"]) == 1
    bench.main(args + ["--label", "second", "--no-breakdown"])  # a second run is appended to the history
    data = json.loads(path.read_text())
    assert [h["label"] for h in data["history"]] == ["", "second"]
    assert "breakdown_s" not in data


def test_flop_count_of_base_config(bench):
    from beats_fairseq.modules.backbone import BeatsBackboneConfig

    flops = bench.model_flops(BeatsBackboneConfig(), 160000)
    assert flops["patches"] == 496
    assert 98e9 < flops["total"] < 99.5e9  # about 99 GFLOP per 10 s clip
    macs_per_layer = 4 * 496 * 768**2 + 2 * 496**2 * 768 + 2 * 496 * 768 * 3072 + 496 * 768 * 8
    expected = 2 * (496 * 256 * 512 + 496 * 512 * 768 + 496 * 768 * 48 * 128 + 12 * macs_per_layer)
    assert flops["total"] == expected


def test_cuda_request_without_cuda_is_a_clear_error(bench, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench.main(["--tiny", "--device", "cuda", "--dtype", "bfloat16", "--json", str(tmp_path / "x.json")])


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrain_step_tiny_run_writes_json(tmp_path):
    module = load_script("pretrain_step")
    path = tmp_path / "step.json"
    args = ["--tiny", "--batch", "2", "--seconds", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
            "--matmul-size", "64", "--out", str(path)]
    assert module.main(args + ["--no-profile"]) == 0
    data = json.loads(path.read_text())
    assert [r["variant"] for r in data["results"]] == list(module.DEFAULT_VARIANTS)
    assert all(r["seconds_median"] > 0 and r["mfu"] > 0 for r in data["results"]) and len(data["history"]) == 1
    assert data["device"] == "cpu" and data["model"] == "tiny"
    assert module.main(args + ["--variants", "iter1", "iter1_masks", "finetune", "--num-masks", "3"]) == 0
    data = json.loads(path.read_text())
    rows = {r["variant"]: r for r in data["results"]}
    assert rows["iter1_masks"]["views_per_clip"] == 3 and len(data["history"]) == 2
    # three views: the encoder and predictor FLOPs triple, the front end's do not
    assert 2 * rows["iter1"]["flops"]["gflop"] < rows["iter1_masks"]["flops"]["gflop"] < 3 * rows["iter1"]["flops"]["gflop"]
    for row in rows.values():
        assert abs(sum(row["profile"]["share"].values()) - 1) < 0.02
        assert {"fbank", "encoder_layers", "backward", "optimizer"} <= set(row["profile"]["share"])
    assert "predictor_layers" in rows["iter1"]["profile"]["share"] and "labels" in rows["iter1"]["profile"]["share"]


def test_flop_count_corrects_the_grouped_conv_backward():
    """Positional conv alone: torch counts its backward as 1 + groups forwards; the truth is 2."""
    from beats_fairseq.modules.encoder import WeightNormConv1d

    flops = load_script("flops")
    conv = WeightNormConv1d(64, 16, 8)
    x = torch.randn(2, 64, 40, requires_grad=True)
    result = flops.count_flops(lambda: conv(x).sum().backward())
    forward = 2 * 2 * 41 * 64 * (64 // 8) * 16  # 41 outputs before SamePad
    assert result["gflop"] * 1e9 == 3 * forward
    assert result["conv_backward_as_counted_by_torch_gflop"] * 1e9 == (1 + 8) * forward


@pytest.mark.slow
def test_data_scale_smoke_run_writes_json(tmp_path):
    """benchmarks/data_scale.py on 3000 entries and 2 clips: the memory and throughput tables and the JSON."""
    import subprocess
    import sys

    script = SCRIPT.with_name("data_scale.py")
    out = tmp_path / "data_scale.json"
    args = [sys.executable, str(script), "--entries", "3000", "--workers", "2", "--clips", "2", "--repeats", "1",
            "--label", "smoke", "--json", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "USS MB" in proc.stdout and "clips/s/worker" in proc.stdout
    data = json.loads(out.read_text())
    memory = data["memory"]
    assert memory["entries"] == 3000 and len(memory["manifest"]["workers"]) == 2
    for part in ("manifest", "label_store"):
        for worker in memory[part]["workers"]:
            assert set(worker["growth"]) == {"rss", "pss", "uss"}
    rows = data["throughput"]["rows"]
    assert {(r["format"], r["precomputed_labels"]) for r in rows} == {
        (f, p) for f in ("wav_16k", "flac_16k", "wav_44k_resampled") for p in (False, True)}
    assert all(r["clips_per_s_per_worker"] > 0 and r["workers_per_gpu"] >= 1 for r in rows)
    assert [h["label"] for h in data["history"]] == ["smoke"]


def test_cli_startup_smoke_run_writes_json(tmp_path):
    """benchmarks/cli_startup.py on one command, one start per call: the rows, their exit checks and the JSON."""
    module = load_script("cli_startup")
    assert "beats-predict" in module.console_scripts()
    path = tmp_path / "cli_startup.json"
    args = ["--repeats", "1", "--warmup", "0", "--commands", "beats-config-dir", "--bad-args", "--json", str(path)]
    module.main(args)
    data = json.loads(path.read_text())
    assert [(r["command"], r["call"]) for r in data["rows"]] == [
        (module.BARE, ""), ("beats-config-dir", "help"), ("beats-config-dir", "bad-args")]
    assert all(r["runs"] == 1 and 0 < r["min_s"] <= r["median_s"] <= r["max_s"] for r in data["rows"])
    assert len(data["history"]) == 1 and data["repeats"] == 1
    with pytest.raises(SystemExit):  # a command that does not answer as expected stops the run
        module.start([sys.executable, "-c", "raise SystemExit(3)"], 0, None)


OFFICIAL_DIR = os.environ.get("BEATS_OFFICIAL_DIR", "")


def test_finetune_vs_official_skips_without_the_official_code(tmp_path, capsys):
    module = load_script("finetune_vs_official")
    out = tmp_path / "vs.json"
    assert module.main(["--official", str(tmp_path), "--tiny", "--out", str(out)]) == 0
    assert "skipped: --official" in capsys.readouterr().out and "BEATs.py" in module.missing_official(tmp_path)
    assert module.main(["--tiny", "--out", str(out)]) == 0
    assert "no --official folder given" in capsys.readouterr().out and not out.exists()


@pytest.mark.skipif(not OFFICIAL_DIR, reason="set BEATS_OFFICIAL_DIR to the official BEATs code folder")
def test_finetune_vs_official_tiny_run_writes_json(tmp_path):
    module = load_script("finetune_vs_official")
    path = tmp_path / "vs.json"
    args = ["--official", OFFICIAL_DIR, "--tiny", "--seconds", "1", "--repeats", "1", "--warmup", "0",
            "--threads", "1", "--matmul-size", "64", "--profile", "--profile-rows", "4", "--out", str(path)]
    assert module.main(args) == 0
    data = json.loads(path.read_text())
    assert data["eval_probability_max_difference"] < 1e-5  # the same weights in both codes
    rows = {r["code"]: r for r in data["results"]}
    assert set(rows) == {"this_project", "official"} and data["official_over_this_project"] > 0
    for row in rows.values():
        assert 0 < row["forward_seconds_median"] < row["seconds_median"] and row["mfu"] > 0
        assert len(row["profile"]["ops"]) == 4 and 0 < sum(op["share"] for op in row["profile"]["ops"]) <= 1
    assert len(data["history"]) == 1


def test_fp32_gap_on_cpu_finds_float32_rounding_only(tmp_path):
    """``benchmarks/fp32_gap.py``: on CPU every primitive and every encoder module is within float32
    rounding of float64 (a lower-precision kernel would show as >= 1e-4)."""
    module = load_script("fp32_gap")
    report = module.main(["--device", "cpu", "--batch", "2", "--length", "40", "--out", str(tmp_path / "gap.json")])
    assert json.loads((tmp_path / "gap.json").read_text())["modules"] == report["modules"]
    assert {"matmul", "sdpa_math", "rfft_irfft"} <= set(report["primitives"])
    assert any(name.startswith("layers.1.fc1") for name in report["modules"])
    assert max(report["primitives"].values()) < 1e-5 and max(report["modules"].values()) < 1e-5
