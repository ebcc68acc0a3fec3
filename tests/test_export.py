"""ONNX export (beats_fairseq/export.py, beats-export): onnxruntime vs PyTorch on real audio."""

import pytest
import torch

from beats_fairseq import load
from beats_fairseq.export import EXPORT_MIN_TORCH, check_export_torch, compare_onnxruntime, export_onnx

onnxruntime = pytest.importorskip("onnxruntime", reason="pip install onnxruntime (scripts/setup_env.sh does)")
TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
needs_export_torch = pytest.mark.skipif(TORCH < EXPORT_MIN_TORCH, reason=f"ONNX export needs torch >= {EXPORT_MIN_TORCH}")


def test_export_names_the_torch_it_needs():
    check_export_torch("2.11.0+cu130")
    with pytest.raises(RuntimeError, match=r"torch >= 2.11 \(this is torch 2.10.0\)"):
        check_export_torch("2.10.0")


def waveforms(real_audio):
    """Real audio (devdata clips concatenated) at several lengths and batch sizes."""
    return [real_audio(1.0), torch.cat([real_audio(3.7), real_audio(3.7, first=500)]), real_audio(12.4, first=40)]


@pytest.mark.parametrize("name,outputs", [
    ("beats_small", ["features"]),
    ("beats_small_finetuned", ["features", "probabilities"]),
    ("tokenizer_small", ["features", "labels"]),
])
@needs_export_torch
def test_onnxruntime_matches_pytorch(oracle, real_audio, tmp_path, name, outputs):
    model = load(str(oracle.dir / f"{name}.pt"))
    path = str(tmp_path / f"{name}.onnx")
    assert export_onnx(model, path) == outputs
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveform"]
    assert [o.name for o in session.get_outputs()] == outputs
    worst = compare_onnxruntime(model, path, waveforms(real_audio))
    assert set(worst) == set(outputs)
    for key, value in worst.items():
        assert value <= (0.0 if key == "labels" else 1e-4), (key, value)


@needs_export_torch
def test_layer_output_and_cli(oracle, real_audio, tmp_path, capsys):
    from beats_fairseq.cli.export import main

    path = tmp_path / "layer0.onnx"
    ckpt = str(oracle.dir / "beats_small.pt")
    assert main([ckpt, str(path), "--layer", "0", "--check-audio"]) == 0
    model = load(ckpt)
    assert compare_onnxruntime(model, str(path), waveforms(real_audio)[:1], layer=0)["features"] <= 1e-4
    assert main([ckpt, str(path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main([ckpt, str(path), "--overwrite", "--layer", "7"]) == 1
    assert "--layer 7" in capsys.readouterr().err


@pytest.mark.slow
@needs_export_torch
def test_beats_base_size_export(real_audio, tmp_path):
    """BEATs-base size (90M parameters, random weights): within 1e-4 at 1 s to 23.3 s."""
    from beats_fairseq.models.beats_encoder import BeatsEncoderModel, BeatsEncoderModelConfig

    torch.manual_seed(0)
    model = BeatsEncoderModel(BeatsEncoderModelConfig()).eval()
    path = str(tmp_path / "base.onnx")
    export_onnx(model, path)
    wavs = [real_audio(1.0), real_audio(4.7), torch.cat([real_audio(10.0), real_audio(10.0, first=300)]), real_audio(23.3)]
    assert compare_onnxruntime(model, path, wavs)["features"] <= 1e-4


@needs_export_torch
def test_latency_benchmark_smoke(tmp_path):
    """benchmarks/onnx_latency.py runs and writes its JSON (tiny model; nothing is timed here)."""
    import importlib.util
    import json

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("onnx_latency", REPO / "benchmarks" / "onnx_latency.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "latency.json"
    result = bench.main(["--tiny", "--batch", "2", "--seconds", "1.5", "--repeats", "1", "--warmup", "0",
                         "--threads", "1", "--json", str(path)])
    data = json.loads(path.read_text())
    assert set(data["seconds_per_batch"]) == {"pytorch", "onnxruntime"} and data["opset"] == 18
    assert data["max_abs_diff"] == result["max_abs_diff"] < 1e-4 and len(data["history"]) == 1
    assert data["audio"].startswith("devdata" if bench.DEVDATA.is_dir() else "synthetic")
