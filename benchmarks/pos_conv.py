#!/usr/bin/env python
"""The convolutional positional embedding (grouped Conv1d, 768 channels, kernel 128, 16 groups, weight
norm) timed forward + backward in several formulations, and the top GPU kernels of a BEATs-base step.

With cuDNN's grouped kernels the positional convolutions took about a third of a bf16
pre-training update on an H200 (``pretrain_step.py``'s profile), far more than their FLOPs.
This script times the same convolution as

* ``conv1d_view``: ``F.conv1d`` on the ``(B, C, L)`` transpose of the ``(B, L, C)`` activations;
* ``conv1d_contiguous``: the same on a contiguous copy;
* ``conv2d_channels_last``: a ``1 x K`` conv2d in channels-last layout (the encoder's CPU path);
* ``fft``: ``fft_grouped_conv1d``, the convolution as a product in the frequency domain (float32
  FFTs, per group a batched complex matrix product; what the encoder runs on CUDA);

each with ``torch.backends.cudnn.benchmark`` off and on, and checks every output against a float64
``F.conv1d``. ``--profile`` adds the 15 most expensive GPU kernels of one BEATs-base fine-tuning
forward + backward (``--profile-batch`` clips of 10 s).

    python benchmarks/pos_conv.py --device cuda --batch 256          # GPU
    python benchmarks/pos_conv.py --device cpu --batch 2 --length 64  # smoke test
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from beats_fairseq.modules.encoder import WeightNormConv1d, fft_grouped_conv1d  # noqa: E402


def methods(conv):
    def conv1d_view(x):
        return F.conv1d(x.transpose(1, 2), conv.normalised_weight(), conv.bias, padding=conv.padding, groups=conv.groups)

    def conv1d_contiguous(x):
        return F.conv1d(x.transpose(1, 2).contiguous(), conv.normalised_weight(), conv.bias, padding=conv.padding,
                        groups=conv.groups)

    def conv2d_channels_last(x):
        return conv.channels_last_conv(x.transpose(1, 2), conv.normalised_weight(), conv.bias)

    def fft(x):
        return fft_grouped_conv1d(x.transpose(1, 2), conv.normalised_weight(), conv.bias, conv.padding, conv.groups)

    return {"conv1d_view": conv1d_view, "conv1d_contiguous": conv1d_contiguous,
            "conv2d_channels_last": conv2d_channels_last, "fft": fft}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device, repeats):
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def profile_finetune(device, batch, dtype):
    from torch.profiler import ProfilerActivity, profile

    from beats_fairseq.modules.backbone import BeatsBackbone, BeatsBackboneConfig

    model = BeatsBackbone(BeatsBackboneConfig()).to(device).train()
    source = torch.randn(batch, 160_000, device=device)
    padding = torch.zeros_like(source, dtype=torch.bool)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            features, _ = model.extract_features(source, padding)
        features.float().pow(2).mean().backward()

    step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events)
    top = sorted(events, key=lambda e: -getattr(e, attr))[:15]
    return {"batch": batch, "total_ms": total / 1e3,
            "top": [{"name": e.key[:120], "ms": round(getattr(e, attr) / 1e3, 3),
                     "share": round(getattr(e, attr) / total, 4)} for e in top]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="autocast dtype")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--length", type=int, default=496, help="patches per clip (496 for 10 s)")
    p.add_argument("--channels", type=int, default=768)
    p.add_argument("--kernel", type=int, default=128)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="also the top GPU kernels of a BEATs-base step")
    p.add_argument("--profile-batch", type=int, default=64)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("pos_conv.py: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    conv = WeightNormConv1d(args.channels, args.kernel, args.groups).to(device)
    x = torch.randn(args.batch, args.length, args.channels, device=device, requires_grad=True)
    with torch.no_grad():
        reference = F.conv1d(x.transpose(1, 2).double(), conv.normalised_weight().double(), conv.bias.double(),
                             padding=conv.padding, groups=conv.groups)
    results = {}
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        for name, fn in methods(conv).items():
            key = f"{name}{'_cudnn_benchmark' if benchmark else ''}"
            if benchmark and name == "fft":
                continue

            def step():
                x.grad = None
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    out = fn(x)
                out.float().pow(2).mean().backward()

            try:
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    out = fn(x).double()
                error = float((out - reference).abs().max() / reference.abs().max())
                with torch.no_grad():
                    out32 = fn(x).double()
                error32 = float((out32 - reference).abs().max() / reference.abs().max())
                forward = time_it(lambda: fn(x.detach()), device, args.repeats)
                both = time_it(step, device, args.repeats)
                results[key] = {"forward_ms": round(1e3 * forward, 3), "forward_backward_ms": round(1e3 * both, 3),
                                "rel_error": error, "rel_error_fp32": error32}
            except Exception as e:  # noqa: BLE001 - a formulation that cannot run is recorded
                results[key] = {"error": f"{type(e).__name__}: {e}"[:200]}
            print(f"{key:<36} {json.dumps(results[key])}", flush=True)
    torch.backends.cudnn.benchmark = False
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": args.dtype, "shape": [args.batch, args.length, args.channels],
              "kernel": args.kernel, "groups": args.groups, "results": results}
    if args.profile:
        report["profile_finetune_step"] = profile_finetune(device, args.profile_batch, dtype)
        for row in report["profile_finetune_step"]["top"]:
            print(f"  {row['share']:6.1%} {row['ms']:9.3f} ms  {row['name']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
