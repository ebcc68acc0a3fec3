#!/usr/bin/env python
"""Encoder inference speed and model FLOPs utilisation (MFU) of the BEATs backbone.

Builds ``BeatsBackbone(BeatsBackboneConfig())`` (BEATs-base: 12 layers, width 768,
90,311,792 parameters), feeds a batch of random waveforms through
``extract_features`` (the full pipeline: Kaldi fbank, patch embedding, encoder) under
``torch.inference_mode()``, and compares the achieved FLOP rate with the fp32 (or
bf16) matrix-multiply throughput of the same machine, measured in the same run.

    MFU = (model FLOPs per batch / median seconds per batch) / matmul FLOP/s

Model FLOPs are counted analytically as 2 x multiply-accumulates of every matrix
product of the model (see :func:`model_flops`); the fbank, softmax, LayerNorm, GELU
and other element-wise work are *not* counted (they are overhead MFU has to pay for).

Timings are interleaved: every repeat times one model batch and then one square
``torch.mm``, so both see the same machine load when other processes share the CPU.

Usage (from the repository root)::

    python benchmarks/encoder_mfu.py --batch 4 --seconds 10 --repeats 5
    python benchmarks/encoder_mfu.py --device cuda --dtype bfloat16 --batch 32

Results go to ``benchmarks/results/encoder_mfu_<device>.json``; every run is also
appended to that file's ``history`` list (use ``--label`` to say what changed).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from beats_fairseq.modules import fbank as fb  # noqa: E402
from beats_fairseq.modules.backbone import BeatsBackbone, BeatsBackboneConfig  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TINY = dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
            embed_dim=32)


# --------------------------------------------------------------------------------------
# FLOP count
# --------------------------------------------------------------------------------------

def num_patches(cfg, num_samples: int) -> int:
    """Patches of one clip: (fbank frames // p) time x (128 // p) frequency patches."""
    frames = fb.num_frames(num_samples)
    return (frames // cfg.input_patch_size) * (fb.NUM_MEL_BINS // cfg.input_patch_size)


def model_flops(cfg, num_samples: int) -> dict:
    """Analytic FLOPs of one clip of ``num_samples`` samples (2 FLOPs per multiply-accumulate).

    With N patches, p the patch size, E = embed_dim, D = encoder_embed_dim,
    F = encoder_ffn_embed_dim, K = conv_pos, G = conv_pos_groups, H heads of width D/H:

    * patch_embedding   N * p*p * E                (16x16 stride-16 conv, 1 input channel)
    * post_extract_proj N * E * D                  (only when E != D)
    * pos_conv          N * D * (D/G) * K          (grouped conv, "same" length)
    * per layer
        - q, k, v, out  4 * N * D * D
        - Q K^T         N * N * D                  (all heads together)
        - A V           N * N * D
        - FFN           2 * N * D * F
        - gate          N * H * (D/H) * 8          (grep_linear; negligible)

    BEATs-base, 10 s (160000 samples, 998 frames, N = 62 * 8 = 496):
    0.065 + 0.195 + 2.340 + 12 * 3.892 = 49.30 GMAC = 98.6 GFLOP per clip.
    Not counted: fbank (FFT, mel), biases, softmax, LayerNorm, GELU, gating, residuals.
    """
    n = num_patches(cfg, num_samples)
    p, e, d, f = cfg.input_patch_size, cfg.embed_dim, cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
    h = cfg.encoder_attention_heads
    macs = {
        "patch_embedding": n * p * p * e,
        "post_extract_proj": n * e * d if e != d else 0,
        "pos_conv": n * d * (d // cfg.conv_pos_groups) * cfg.conv_pos,
        "qkv_out_proj": cfg.encoder_layers * 4 * n * d * d,
        "attention_qk_av": cfg.encoder_layers * 2 * n * n * d,
        "ffn": cfg.encoder_layers * 2 * n * d * f,
        "gate": cfg.encoder_layers * n * h * (d // h) * 8 if cfg.gru_rel_pos else 0,
    }
    flops = {k: 2 * v for k, v in macs.items()}
    flops["total"] = sum(flops.values())
    flops["patches"] = n
    return flops


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "beats_fairseq/modules"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or not out.stdout.strip():
            return "unknown"
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_idle_fraction(seconds: float = 1.0):
    """Share of idle CPU time over ``seconds`` (from /proc/stat), or None off Linux."""
    def read():
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return values[3] + values[4], sum(values)

    try:
        idle0, total0 = read()
        time.sleep(seconds)
        idle1, total1 = read()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / max(1, total1 - total0)


def load_average():
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):
        return None


class Timer:
    """Wall-clock timer that synchronises the device first (CUDA kernels are asynchronous).

    ``clock="cpu"`` reads the process CPU time instead (all threads together): on a CPU shared
    with other jobs it counts only the time this process actually ran. Meaningful with one
    thread; with more, idle OpenMP threads spinning at barriers are counted too.
    """

    def __init__(self, device: torch.device, clock: str = "wall"):
        self.cuda = device.type == "cuda"
        self.clock = time.process_time if clock == "cpu" else time.perf_counter

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return self.clock()


def recipe_optimizer(params) -> torch.optim.Optimizer:
    """The optimizer of the paper-scale recipes as a torch optimizer: ``beats_adam`` (fairseq's adam,
    fused) with their betas (0.9, 0.98), eps 1e-6 and weight decay 0.01."""
    from beats_fairseq.fused_adam import FusedStepAdam

    return FusedStepAdam(params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)


def autocast_context(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


def matmul_gflops(size: int, device: torch.device, dtype: torch.dtype, timer: Timer, calls: int = 1) -> float:
    """FLOP rate of ``calls`` square (size x size) @ (size x size) products, in GFLOP/s."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up (library dispatch, page faults of the buffers)
    start = timer.now()
    for _ in range(calls):
        torch.mm(a, b, out=out)
    seconds = timer.now() - start
    return 2.0 * size**3 * calls / seconds / 1e9


def component_times(model, source, device, dtype, timer) -> dict:
    """One extra pass with module hooks: seconds spent in each part of the pipeline.

    ``attention`` is the whole ``self_attn`` module (q/k/v/out projections, gate, bias mask,
    SDPA); ``ffn_norm_residual`` is the rest of every layer (fc1, GELU, fc2, residuals,
    both LayerNorms).
    """
    spans = {}
    starts = {}
    handles = []

    def watch(name, module):
        def pre(_module, _inputs):
            starts[name] = timer.now()

        def post(_module, _inputs, _output):
            spans[name] = spans.get(name, 0.0) + timer.now() - starts[name]

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    watch("patch_embedding", model.patch_embedding)
    watch("patch_layer_norm", model.layer_norm)
    if model.post_extract_proj is not None:
        watch("post_extract_proj", model.post_extract_proj)
    watch("pos_conv", model.encoder.pos_conv)
    watch("encoder", model.encoder)
    for i, layer in enumerate(model.encoder.layers):
        watch(f"layer{i}", layer)
        watch(f"attention{i}", layer.self_attn)
    try:
        with torch.inference_mode(), autocast_context(device, dtype):
            start = timer.now()
            model.fbank(source)
            fbank_s = timer.now() - start
            start = timer.now()
            model.extract_features(source)
            pass_s = timer.now() - start
    finally:
        for handle in handles:
            handle.remove()
    layers = range(len(model.encoder.layers))
    attention = sum(spans[f"attention{i}"] for i in layers)
    out = {
        "fbank": fbank_s,  # timed alone, just before the pass (the pass computes it again)
        "patch_embedding_ln_proj": spans["patch_embedding"] + spans["patch_layer_norm"]
        + spans.get("post_extract_proj", 0.0),
        "pos_conv": spans["pos_conv"],
        "attention": attention,
        "ffn_norm_residual": sum(spans[f"layer{i}"] for i in layers) - attention,
    }
    out["other"] = max(0.0, pass_s - sum(out.values()))
    out["pass_total"] = pass_s
    return out


def profile_top_ops(model, source, device, dtype, rows: int = 15) -> list:
    """torch.profiler self time per aten op (one pass), largest first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch.inference_mode(), autocast_context(device, dtype):
        with profile(activities=activities) as prof:
            model.extract_features(source)
            if device.type == "cuda":
                torch.cuda.synchronize()
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)
    return [
        {"op": e.key, "calls": e.count, "self_ms": getattr(e, key, 0.0) / 1e3}
        for e in events[:rows]
    ]


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="BEATs encoder inference throughput and model FLOPs utilisation (MFU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--batch", type=int, default=4, help="clips per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (16 kHz)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16 runs the model under autocast (the fbank stays fp32) and measures bf16 matmul")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the square matmul used as the peak (default 3072 on CPU, 8192 on CUDA)")
    parser.add_argument("--json", type=str, default=None,
                        help="output file (default benchmarks/results/encoder_mfu_<device>.json)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="'cpu': time by process CPU time (for a busy shared CPU; use with --threads 1)")
    parser.add_argument("--label", type=str, default="", help="note stored with this run in the history list")
    parser.add_argument("--no-history", action="store_true", help="overwrite the JSON without keeping earlier runs")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-component timing pass")
    parser.add_argument("--profile", action="store_true", help="also record torch.profiler top ops in the JSON")
    parser.add_argument("--tiny", action="store_true", help="tiny model (2 layers, width 64) for smoke tests")
    parser.add_argument("--attention-backend", choices=["sdpa", "flex"], default="sdpa",
                        help="encoder attention: SDPA with the float bias mask, or flex_attention with a score_mod")
    parser.add_argument("--compile", action="store_true", help="torch.compile every Transformer layer")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> dict:
    """Runs the benchmark; returns the result dict (also printed and written as JSON).

    The caller's thread count and random state are restored afterwards.
    """
    args = build_parser().parse_args(argv)
    if args.clock == "cpu" and args.device != "cpu":
        raise SystemExit("--clock cpu only makes sense with --device cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available on this machine "
                         f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu")
    threads_before = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            if args.threads is not None:
                torch.set_num_threads(args.threads)
            torch.manual_seed(args.seed)
            return run(args)
    finally:
        torch.set_num_threads(threads_before)


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    threads = torch.get_num_threads()

    cfg = BeatsBackboneConfig(**(TINY if args.tiny else {}))
    model = BeatsBackbone(cfg).eval().to(device)
    model.encoder.set_attention_backend(args.attention_backend)
    if args.compile:
        model.encoder.compile_layers()
    params = sum(p.numel() for p in model.parameters())
    num_samples = int(round(args.seconds * fb.SAMPLE_RATE))
    flops = model_flops(cfg, num_samples)
    batch_flops = flops["total"] * args.batch
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 3072)
    matmul_calls = 10 if device.type == "cuda" else 1
    timer = Timer(device, args.clock)

    print(f"BEATs backbone{' (tiny)' if args.tiny else ''}: {cfg.encoder_layers} layers, width "
          f"{cfg.encoder_embed_dim}, {params:,} parameters")
    print(f"input: {args.batch} x {args.seconds:g} s = {flops['patches']} patches/clip; "
          f"{flops['total'] / 1e9:.2f} GFLOP/clip (analytic, 2*MACs)")
    print(f"device {device.type}, dtype {args.dtype}, threads {threads}, clock {args.clock}, torch {torch.__version__}, "
          f"CPU {cpu_model()}")

    idle = cpu_idle_fraction() if device.type == "cpu" and not args.tiny else None
    load_start = load_average()
    if idle is not None and idle < 0.8:
        print(f"WARNING: the CPU was only {100 * idle:.0f} % idle before the run (load average {load_start}): "
              "other processes compete for the cores and the timings (MFU included) are unreliable")
    source = (0.1 * torch.randn(args.batch, num_samples)).to(device)
    with torch.inference_mode(), autocast_context(device, dtype):
        for _ in range(args.warmup):
            model.extract_features(source)

    batch_s, mm_gflops = [], []
    for _ in range(max(1, args.repeats)):
        with torch.inference_mode(), autocast_context(device, dtype):
            start = timer.now()
            model.extract_features(source)
            batch_s.append(timer.now() - start)
        mm_gflops.append(matmul_gflops(matmul_size, device, dtype, timer, matmul_calls))

    seconds = statistics.median(batch_s)
    peak = statistics.median(mm_gflops)
    achieved = batch_flops / seconds / 1e9
    mfu_per_repeat = [batch_flops / s / 1e9 / g for s, g in zip(batch_s, mm_gflops)]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "label": args.label,
        "git": git_commit(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "dtype": args.dtype,
        "torch_version": torch.__version__,
        "threads": threads,
        "clock": args.clock,
        "tiny": args.tiny,
        "attention_backend": args.attention_backend,
        "compile": args.compile,
        "batch": args.batch,
        "seconds": args.seconds,
        "params": params,
        "patches_per_clip": flops["patches"],
        "gflop_per_clip": flops["total"] / 1e9,
        "gflop_per_clip_by_part": {k: v / 1e9 for k, v in flops.items() if k not in ("total", "patches")},
        "repeats": len(batch_s),
        "warmup": args.warmup,
        "seconds_per_batch": seconds,
        "seconds_per_batch_all": batch_s,
        "clips_per_s": args.batch / seconds,
        "achieved_gflops": achieved,
        "matmul_size": matmul_size,
        "matmul_gflops": peak,
        "matmul_gflops_all": mm_gflops,
        "mfu": achieved / peak,
        "mfu_median_of_pairs": statistics.median(mfu_per_repeat),
        # best case of both (fastest batch / fastest matmul): robust to sporadic load from other jobs
        "mfu_best": batch_flops / min(batch_s) / 1e9 / max(mm_gflops),
        "cpu_idle_before": idle,
        "loadavg_start": load_start,
        "loadavg_end": load_average(),
    }
    if not args.no_breakdown:
        result["breakdown_s"] = component_times(model, source, device, dtype, timer)
    if args.profile:
        result["profile_top_ops"] = profile_top_ops(model, source, device, dtype)

    print_table(result)
    path = Path(args.json) if args.json else RESULTS_DIR / f"encoder_mfu_{device.type}.json"
    write_json(path, result, keep_history=not args.no_history)
    print(f"wrote {path}")
    return result


HISTORY_KEYS = ("date", "label", "git", "device", "dtype", "threads", "clock", "batch", "seconds", "tiny",
                "seconds_per_batch", "clips_per_s", "achieved_gflops", "matmul_gflops", "mfu", "mfu_best", "breakdown_s",
                "cpu_idle_before", "loadavg_start")


def write_json(path: Path, result: dict, keep_history: bool = True, entry: Optional[dict] = None) -> None:
    """Write ``result`` to ``path`` atomically, with the ``history`` of earlier runs there and this one
    appended (``entry``; default: the ``HISTORY_KEYS`` of ``result``)."""
    history = []
    if keep_history and path.exists():
        try:
            history = json.loads(path.read_text()).get("history", [])
        except (OSError, ValueError, AttributeError):
            history = []
    history.append(entry if entry is not None else {k: result[k] for k in HISTORY_KEYS if k in result})
    out = dict(result, history=history)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)


def print_table(r: dict) -> None:
    rows = [
        ("clips / s", f"{r['clips_per_s']:.3f}"),
        ("seconds / batch (median)", f"{r['seconds_per_batch']:.3f}  (all: "
         + ", ".join(f"{s:.3f}" for s in r["seconds_per_batch_all"]) + ")"),
        ("model GFLOP / batch", f"{r['gflop_per_clip'] * r['batch']:.1f}"),
        ("achieved GFLOP/s", f"{r['achieved_gflops']:.1f}"),
        (f"matmul GFLOP/s ({r['matmul_size']}^2, {r['dtype']})", f"{r['matmul_gflops']:.1f}  (all: "
         + ", ".join(f"{g:.0f}" for g in r["matmul_gflops_all"]) + ")"),
        ("MFU", f"{100 * r['mfu']:.1f} %  (median of per-repeat pairs {100 * r['mfu_median_of_pairs']:.1f} %, "
         f"best/best {100 * r['mfu_best']:.1f} %)"),
    ]
    if "breakdown_s" in r:
        b = r["breakdown_s"]
        total = b["pass_total"]
        rows.append(("breakdown (one pass, hooks)", f"{total:.3f} s"))
        for key in ("fbank", "patch_embedding_ln_proj", "pos_conv", "attention", "ffn_norm_residual", "other"):
            rows.append((f"  {key}", f"{b[key]:.3f} s  ({100 * b[key] / total:.1f} %)"))
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 40))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("-" * (width + 40))
    if "profile_top_ops" in r:
        print("top ops (torch.profiler self time):")
        for e in r["profile_top_ops"]:
            print(f"  {e['self_ms']:9.1f} ms  {e['calls']:4d} x  {e['op']}")


if __name__ == "__main__":
    main()
