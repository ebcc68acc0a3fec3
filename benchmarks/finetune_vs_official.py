#!/usr/bin/env python
"""A fine-tuning step of this project's ``beats_classifier`` against the official BEATs code, in one run.

Both models have the same architecture and the same weights: this project's model is built
(BEATs-base by default, a 527-class head), converted with ``to_official()`` and loaded strictly
into the official ``BEATs`` class imported from ``--official DIR`` (the folder holding the
official ``BEATs.py``, ``backbone.py`` and ``modules.py``; it is not part of this repository).
Their eval-mode probabilities are compared first, as a check that the two are the same model.

One step is what fine-tuning does per batch in train mode (dropout 0.1, attention dropout 0.1):
forward from the waveform (fbank, patch embedding, encoder, mean-pooled head), binary
cross-entropy against random multi-hot targets, backward and an optimizer step. The official model
returns probabilities, so its loss is ``binary_cross_entropy`` on them; ours is the same loss on
the logits (``binary_cross_entropy_with_logits``), as the ``beats_classification`` criterion does.
Each side steps the optimizer its users get: this project's fine-tuning recipes' ``beats_adam``
(fairseq's adam, fused), and ``torch.optim.AdamW`` with its defaults for the official code, which
ships no training code (``--same-optimizer`` gives it ``beats_adam`` too). The optimizer step's
time is reported on its own.
Timings are interleaved: each repeat runs one model twice in a row and times the second, then the
other, then one square matmul (the in-run peak for MFU). FLOPs per step are counted once, on this
project's model (``flops.py``: FlopCounterMode with the grouped-convolution correction); both
models do the same matrix products, so the same count gives both MFUs.

``--profile`` adds one step of each under ``torch.profiler``: self time per op, largest first, as
shares of the step (what benchmarks/README.md records).

    python benchmarks/finetune_vs_official.py --official /path/to/unilm/beats --threads 2
    python benchmarks/finetune_vs_official.py --official /path/to/unilm/beats --profile --repeats 5
    python benchmarks/finetune_vs_official.py --official /path/to/unilm/beats --tiny --repeats 1   # smoke test

Without the official folder the script says so and exits with status 0 (nothing is measured).
Results: ``benchmarks/results/finetune_vs_official_<device>.json`` (latest run + ``history``).
"""

import argparse
import datetime
import importlib
import logging
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from beats_fairseq.models.beats_classifier import BeatsClassifierConfig, BeatsClassifierModel  # noqa: E402
from encoder_mfu import (TINY, Timer, cpu_model, git_commit, load_average, matmul_gflops,  # noqa: E402
                         recipe_optimizer, write_json)
from flops import count_flops  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OFFICIAL_FILES = ("BEATs.py", "backbone.py", "modules.py")
NUM_CLASSES = 527


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune_vs_official.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", default=None,
                   help="folder of the official BEATs code (BEATs.py, backbone.py, modules.py from microsoft/unilm)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument("--batch", type=int, default=2, help="clips per step (default: 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default: 10)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per model (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="side of the square matmul used as the peak (default 3072 on CPU, 8192 on CUDA)")
    p.add_argument("--same-optimizer", action="store_true",
                   help="the official model steps beats_adam too (default: torch.optim.AdamW, the one its users write)")
    p.add_argument("--profile", action="store_true", help="one more step of each under torch.profiler: op shares")
    p.add_argument("--profile-rows", type=int, default=15, help="ops listed per profile (default: 15)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (and MFU)")
    p.add_argument("--tiny", action="store_true", help="2-layer width-64 models (smoke test)")
    p.add_argument("--label", default="", help="what this run is about (kept in the JSON history)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/finetune_vs_official_<device>.json)")
    return p


def missing_official(folder) -> str:
    """Why ``folder`` cannot be used as the official code (empty string when it can)."""
    if not folder:
        return "no --official folder given"
    folder = Path(folder)
    missing = [name for name in OFFICIAL_FILES if not (folder / name).is_file()]
    if missing:
        return f"--official {folder}: {', '.join(missing)} not found there"
    return ""


def import_official(folder):
    """The official ``BEATs`` and ``BEATsConfig`` classes, imported from ``folder``.

    The official files import each other as top-level modules (``from backbone import ...``), so the
    folder goes first on ``sys.path``.
    """
    folder = str(Path(folder).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    logging.getLogger("BEATs").setLevel(logging.WARNING)  # it logs its whole config at INFO
    module = importlib.import_module("BEATs")
    if str(Path(module.__file__).resolve().parent) != folder:
        raise SystemExit(f"--official {folder}: 'BEATs' was already imported from {module.__file__}")
    return module.BEATs, module.BEATsConfig


def build_models(args, device, official_classes):
    """(this project's classifier, the official BEATs with the same weights), both on ``device``."""
    official_model, official_config = official_classes
    torch.manual_seed(0)
    ours = BeatsClassifierModel(BeatsClassifierConfig(**(dict(TINY) if args.tiny else {}), num_classes=NUM_CLASSES))
    state = ours.to_official()
    theirs = official_model(official_config(state["cfg"]))
    theirs.load_state_dict(state["model"], strict=True)
    return ours.to(device), theirs.to(device)


def same_model_check(ours, theirs, source) -> float:
    """Largest difference of the eval-mode probabilities (the two must be the same model)."""
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        mine, _ = ours.extract_features(source)
        official, _ = theirs.extract_features(source)
    return float((mine - official).abs().max())


def step_fn(model, official: bool, optimizer, source, target, timer, forward_times, optimizer_times):
    """One training step (forward, BCE, backward, optimizer step) of ``model``; appends the times of
    its forward and of its optimizer step."""
    model.train()

    def step():
        start = timer.now()
        if official:
            probs, _ = model.extract_features(source)
            loss = F.binary_cross_entropy(probs, target)
        else:
            logits, _, targets = model(source, target=target)
            loss = F.binary_cross_entropy_with_logits(logits, targets)
        forward_times.append(timer.now() - start)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        start = timer.now()
        optimizer.step()
        optimizer_times.append(timer.now() - start)
    return step


def profile_step(step, device, rows: int) -> dict:
    """Self time of every op in one step under torch.profiler: the ``rows`` largest, as shares of the total."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(getattr(e, key, 0.0) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key, 0.0), reverse=True)
    return {"total_self_ms": round(total / 1e3, 2),
            "ops": [{"op": e.key, "calls": e.count, "self_ms": round(getattr(e, key, 0.0) / 1e3, 2),
                     "share": round(getattr(e, key, 0.0) / total, 4)} for e in events[:rows]]}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    why = missing_official(args.official)
    if why:
        print(f"skipped: {why}; pass --official DIR, the folder of the official BEATs code "
              "(https://github.com/microsoft/unilm/tree/master/beats)")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    timer = Timer(device)
    ours, theirs = build_models(args, device, import_official(args.official))
    torch.manual_seed(0)
    source = torch.randn(args.batch, int(args.seconds * 16000), device=device) * 0.1
    target = (torch.rand(args.batch, NUM_CLASSES, generator=torch.Generator().manual_seed(0)) < 0.02).float().to(device)
    difference = same_model_check(ours, theirs, source)
    print(f"eval-mode probabilities, largest difference: {difference:.2e}", flush=True)

    names = ("this_project", "official")
    forwards, optimizer_times = {name: [] for name in names}, {name: [] for name in names}
    optimizers = {"this_project": recipe_optimizer(ours.parameters()),
                  "official": (recipe_optimizer(theirs.parameters()) if args.same_optimizer
                               else torch.optim.AdamW(theirs.parameters(), lr=1e-5))}
    steps = {name: step_fn(model, name == "official", optimizers[name], source, target, timer, forwards[name],
                           optimizer_times[name])
             for name, model in (("this_project", ours), ("official", theirs))}
    flops = None if args.no_flops else count_flops(steps["this_project"])
    for name in names:
        for _ in range(args.warmup):
            steps[name]()
        forwards[name].clear()
    times = {name: [] for name in names}
    step_forwards, step_optimizers = {name: [] for name in names}, {name: [] for name in names}
    peaks = []
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 3072)
    load_before = load_average()
    for r in range(args.repeats):
        for name in names:
            steps[name]()  # back to back, the second one timed (the first after the other model's is colder)
            start = timer.now()
            steps[name]()
            times[name].append(timer.now() - start)
            step_forwards[name].append(forwards[name][-1])
            step_optimizers[name].append(optimizer_times[name][-1])
        peaks.append(matmul_gflops(matmul_size, device, torch.float32, timer, 10 if device.type == "cuda" else 1))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names)
              + f"; matmul {peaks[-1]:.0f} GFLOP/s", flush=True)
    profiles = {name: profile_step(steps[name], device, args.profile_rows) for name in names} if args.profile else {}

    peak = statistics.median(peaks)
    rows = []
    for name in names:
        median = statistics.median(times[name])
        row = {"code": name, "seconds_median": round(median, 5), "seconds_all": [round(t, 5) for t in times[name]],
               "forward_seconds_median": round(statistics.median(step_forwards[name]), 5),
               "optimizer": type(optimizers[name]).__name__,
               "optimizer_seconds_median": round(statistics.median(step_optimizers[name]), 5),
               "clips_per_second": round(args.batch / median, 3)}
        if flops is not None:
            row["mfu"] = round(flops["gflop"] / median / peak, 4)
        if name in profiles:
            row["profile"] = profiles[name]
        rows.append(row)
    ratio = rows[1]["seconds_median"] / rows[0]["seconds_median"]
    result = {
        "benchmark": "finetune_vs_official", "label": args.label,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "model": "tiny" if args.tiny else "BEATs-base (12 layers, width 768), 527-class head",
        "batch": args.batch, "seconds_per_clip": args.seconds, "repeats": args.repeats, "warmup": args.warmup,
        "eval_probability_max_difference": difference, "gflop_per_step": flops["gflop"] if flops else None,
        "matmul_size": matmul_size, "matmul_gflops": round(peak, 2), "matmul_gflops_all": [round(g, 2) for g in peaks],
        "load_average_before": load_before, "load_average_after": load_average(),
        "official_over_this_project": round(ratio, 4), "results": rows,
    }
    print_table(result)
    write_results(Path(args.out) if args.out else RESULTS_DIR / f"finetune_vs_official_{device.type}.json", result)
    return 0


def print_table(result: dict) -> None:
    print(f"\n{'code':14s} {'s/step':>8s} {'forward s':>10s} {'optimizer s':>12s} {'clips/s':>8s} {'MFU':>6s}"
          "  optimizer")
    for row in result["results"]:
        mfu = f"{100 * row['mfu']:5.1f}%" if "mfu" in row else f"{'-':>6s}"
        print(f"{row['code']:14s} {row['seconds_median']:8.3f} {row['forward_seconds_median']:10.3f} "
              f"{row['optimizer_seconds_median']:12.3f} {row['clips_per_second']:8.2f} {mfu}  {row['optimizer']}")
    if result["gflop_per_step"]:
        print(f"{result['gflop_per_step']:.1f} GFLOP per step; matmul peak {result['matmul_gflops']:.1f} GFLOP/s")
    print(f"this project is {result['official_over_this_project']:.2f}x as fast as the official code per step")
    for row in result["results"]:
        if "profile" in row:
            print(f"profile of {row['code']} (self time per op, {row['profile']['total_self_ms']:.0f} ms in all):")
            for op in row["profile"]["ops"]:
                print(f"  {op['op']:40s} {op['calls']:5d} calls {op['self_ms']:9.1f} ms {100 * op['share']:5.1f} %")


def write_results(out: Path, result: dict) -> None:
    entry = ({k: result[k] for k in ("date", "commit", "label", "device_name", "threads", "matmul_gflops",
                                     "official_over_this_project")}
             | {"seconds_median": {r["code"]: r["seconds_median"] for r in result["results"]},
                "mfu": {r["code"]: r.get("mfu") for r in result["results"]},
                "optimizer": {r["code"]: r["optimizer"] for r in result["results"]}})
    write_json(out, result, entry=entry)
    print(f"results: {out}")


if __name__ == "__main__":
    sys.exit(main())
