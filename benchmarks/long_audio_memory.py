#!/usr/bin/env python
"""Peak memory of frame-level features on a long recording (default 20 min) on CPU.

Builds the recording from devdata clips (``../shared/devdata``, looped) or tones plus noise,
runs ``beats_fairseq.features.frame_features`` in chunks (``--chunk-seconds``, default 10,
hop half a chunk) under ``inference_mode``, checks the column timestamps, and reports the
process's peak resident set size (``resource.getrusage``: ``ru_maxrss``) before and after
the features. Run each model in its own process: the peak is per process.

    python benchmarks/long_audio_memory.py                         # BEATs-base size, random weights
    python benchmarks/long_audio_memory.py --checkpoint CKPT
    python benchmarks/long_audio_memory.py --tiny --minutes 1      # smoke test

Results: ``benchmarks/results/long_audio_memory_cpu.json`` (runs appended to ``history``).
"""

import argparse
import datetime
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_latency import build_model, common_args, real_audio, save_result  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "long_audio_memory_cpu.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser, RESULTS)
    parser.add_argument("--minutes", type=float, default=20.0, help="recording length (default 20)")
    parser.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length; 0 = the whole recording in one pass (default 10)")
    parser.add_argument("--hop-seconds", type=float, default=None, help="chunk hop (default half a chunk)")
    args = parser.parse_args(argv)

    from beats_fairseq.features import column_timestamps, frame_features, num_columns

    torch.set_num_threads(args.threads)
    model, described = build_model(args)
    seconds = args.minutes * 60
    wav, audio = real_audio(1, seconds)
    before = peak_rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        out = frame_features(model, wav, chunk_seconds=args.chunk_seconds or None, hop_seconds=args.hop_seconds)
    elapsed = time.perf_counter() - start
    after = peak_rss_mb()
    columns = num_columns(wav.size(1), model.backbone.patch_size)
    stamps = out.timestamps
    assert out.features.shape[:2] == (1, columns), out.features.shape
    assert torch.equal(stamps, column_timestamps(columns))
    assert abs(float(stamps[1] - stamps[0]) - 0.16) < 1e-9 and seconds - 0.32 <= float(stamps[-1]) <= seconds
    assert torch.isfinite(out.features).all()
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "label": args.label, "model": described, "params": sum(p.numel() for p in model.parameters()),
        "audio": audio, "seconds": seconds, "chunk_seconds": args.chunk_seconds, "hop_seconds": args.hop_seconds,
        "threads": args.threads, "torch_version": torch.__version__,
        "columns": columns, "feature_shape": list(out.features.shape),
        "first_timestamp_s": float(stamps[0]), "last_timestamp_s": float(stamps[-1]),
        "peak_rss_mb_before_features": round(before, 1), "peak_rss_mb": round(after, 1),
        "wall_s": round(elapsed, 1), "tiny": args.tiny,
    }
    print(f"model: {described} ({result['params']:,} parameters); audio: {audio}, {seconds:g} s")
    print(f"{'columns':>8} {'first ts s':>10} {'last ts s':>10} {'peak RSS MB (before)':>21} {'peak RSS MB':>11}")
    print(f"{columns:>8} {result['first_timestamp_s']:>10.4f} {result['last_timestamp_s']:>10.4f} "
          f"{before:>21.1f} {after:>11.1f}")
    save_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
