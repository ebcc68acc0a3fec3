#!/usr/bin/env python
"""onnxruntime (CPU) vs PyTorch latency of one BEATs forward pass, and their difference.

Exports the model with ``beats_fairseq.export.export_onnx`` (fbank inside the graph), then
times ``--batch`` x ``--seconds`` clips (default 4 x 10 s) through the ONNX file in
onnxruntime and through ``backbone.extract_features`` in PyTorch (``inference_mode``),
interleaved, both with ``--threads`` intra-op threads. The clips are real audio: devdata
clips (``../shared/devdata``) concatenated to the length, when that folder exists; else
tones plus noise. The max absolute difference of the features is reported too.

    python benchmarks/onnx_latency.py                      # BEATs-base size, random weights
    python benchmarks/onnx_latency.py --checkpoint CKPT    # any checkpoint beats_fairseq.load reads
    python benchmarks/onnx_latency.py --tiny --repeats 1   # smoke test

Results: ``benchmarks/results/onnx_latency_cpu.json`` (runs appended to ``history``).
"""

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "onnx_latency_cpu.json"
DEVDATA = REPO.parent / "shared" / "devdata"
TINY = dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
            embed_dim=32)


def build_model(args):
    import beats_fairseq
    from beats_fairseq.models.beats_encoder import BeatsEncoderModel, BeatsEncoderModelConfig

    if args.checkpoint:
        return beats_fairseq.load(args.checkpoint), args.checkpoint
    torch.manual_seed(0)
    cfg = BeatsEncoderModelConfig(**(TINY if args.tiny else {}))
    return BeatsEncoderModel(cfg).eval(), "tiny random" if args.tiny else "BEATs-base size, random weights"


def real_audio(batch: int, seconds: float):
    """``(batch, samples)``: devdata clips concatenated (row i starts at clip i), or tones plus noise."""
    from beats_fairseq.data.audio import read_audio
    from beats_fairseq.export import example_waveform

    files = sorted(DEVDATA.glob("*/audio/*/*.flac"))
    samples = int(seconds * 16000)
    if not files:
        return example_waveform(batch, seconds), "synthetic (tones + noise)"
    out = torch.empty(batch, samples)  # filled in place: no copies of a long recording
    for b in range(batch):
        filled, i = 0, b * 37
        while filled < samples:
            wav = read_audio(str(files[i % len(files)]))[: samples - filled]
            out[b, filled: filled + wav.numel()] = wav
            filled += wav.numel()
            i += 1
    return out, f"devdata clips concatenated ({len(files)} files)"


def save_result(path, result: dict) -> None:
    """Write ``result`` to the JSON file ``path``, appended to the ``history`` list it holds."""
    path = Path(path)
    history = json.loads(path.read_text()).get("history", []) if path.exists() else []
    history.append(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(result, history=history), indent=2) + "\n")
    print(f"wrote {path}")


def common_args(parser, results: Path) -> None:
    """Model and output options shared by the benchmarks of ``beats_fairseq.export``/``features``."""
    parser.add_argument("--checkpoint", help="model checkpoint (default: BEATs-base size with random weights)")
    parser.add_argument("--tiny", action="store_true", help="2-layer width-64 random model (smoke test)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads of torch (and onnxruntime) (default: torch's)")
    parser.add_argument("--label", default="", help="note stored with the run")
    parser.add_argument("--json", default=str(results), help=f"output file (default {results.relative_to(REPO)})")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser, RESULTS)
    parser.add_argument("--batch", type=int, default=4, help="clips per forward pass (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each runtime (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    args = parser.parse_args(argv)

    import onnxruntime

    from beats_fairseq.export import OPSET, export_onnx

    torch.set_num_threads(args.threads)
    model, described = build_model(args)
    wav, audio = real_audio(args.batch, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.onnx")
        start = time.perf_counter()
        export_onnx(model, path)
        export_s = time.perf_counter() - start
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    feed = {"waveform": wav.numpy()}

    def run_torch():
        with torch.inference_mode():
            return model.backbone.extract_features(wav)[0]

    def run_ort():
        return session.run(["features"], feed)[0]

    for _ in range(args.warmup):
        run_torch(), run_ort()
    times = {"pytorch": [], "onnxruntime": []}
    for _ in range(args.repeats):
        for name, fn in (("pytorch", run_torch), ("onnxruntime", run_ort)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    diff = float(np.abs(run_torch().numpy() - run_ort()).max())
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "label": args.label, "model": described, "params": sum(p.numel() for p in model.parameters()),
        "audio": audio, "batch": args.batch, "seconds": args.seconds, "threads": args.threads,
        "repeats": args.repeats, "opset": OPSET, "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__, "export_s": round(export_s, 2),
        "seconds_per_batch": {k: round(v, 4) for k, v in median.items()},
        "speedup_onnxruntime": round(median["pytorch"] / median["onnxruntime"], 3),
        "max_abs_diff": diff, "tiny": args.tiny,
    }
    print(f"model: {described} ({result['params']:,} parameters); audio: {audio}")
    print(f"{'runtime':<12} {'batch':>5} {'seconds':>7} {'threads':>7} {'median s/batch':>14}")
    for name, value in median.items():
        print(f"{name:<12} {args.batch:>5} {args.seconds:>7g} {args.threads:>7} {value:>14.4f}")
    print(f"onnxruntime speed-up x{result['speedup_onnxruntime']}; max |features diff| {diff:.3g}")
    save_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
