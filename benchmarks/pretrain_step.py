#!/usr/bin/env python
"""Pre-training update time: iter1 vs iter2+ with labels on the fly vs precomputed labels.

One update is what ``beats_pretraining`` + ``beats_mam`` do per batch: ``BeatsModel`` forward
(fbank, labels, 75 % masking, encoder on the visible patches, label predictor), cross-entropy
on the masked patches, backward and an AdamW step. Three ways to get the labels:

* ``iter1``: the random-projection tokenizer (a matrix product and a nearest code per patch);
* ``iter2_on_the_fly``: a frozen trained tokenizer (BEATs-base size, 12 layers, built with
  random weights: speed does not depend on them) runs on every batch, as with
  ``model.tokenizer_path`` and ``task.precomputed_labels: null``;
* ``iter2_precomputed``: the same labels handed in as ``target``, as the task does with
  ``task.precomputed_labels`` (``beats-precompute-labels``).

Also timed alone: ``tokenizer_labels`` (the tokenizer's ``extract_labels`` on the batch).
Timings are interleaved (every repeat runs each variant twice in a row and times the second
one) so all see the same machine load and each finds memory as its own last update left it.

    python benchmarks/pretrain_step.py                      # BEATs-base, 2 x 10 s clips, CPU
    python benchmarks/pretrain_step.py --device cuda --dtype bfloat16 --batch 16
    python benchmarks/pretrain_step.py --tiny --repeats 1   # smoke test

Results: ``benchmarks/results/pretrain_step_<device>.json`` (latest run + ``history``).
"""

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from beats_fairseq.models.beats import BeatsConfig, BeatsModel  # noqa: E402
from beats_fairseq.models.beats_tokenizer import BeatsTokenizerConfig, BeatsTokenizerModel  # noqa: E402
from encoder_mfu import TINY, Timer, autocast_context, cpu_model, git_commit, load_average  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = ("iter1", "iter2_on_the_fly", "iter2_precomputed", "tokenizer_labels")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain_step.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16: model under torch.autocast; labels and fbank stay float32 (default: float32)")
    p.add_argument("--batch", type=int, default=2, help="clips per update (default: 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default: 10)")
    p.add_argument("--repeats", type=int, default=3, help="timed updates per variant (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates per variant first (default: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="2-layer width-64 models (smoke test)")
    p.add_argument("--label", default="", help="what this run is about (kept in the JSON history)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/pretrain_step_<device>.json)")
    return p


def build_models(args, device, workdir: Path):
    size = TINY if args.tiny else {}
    tokenizer = BeatsTokenizerModel(BeatsTokenizerConfig(**size, kmeans_init=False, estimator_layers=0))
    tokenizer_path = workdir / "tokenizer.pt"
    torch.save(tokenizer.to_official(), tokenizer_path)
    iter1 = BeatsModel(BeatsConfig(**size)).to(device).train()
    iter2 = BeatsModel(BeatsConfig(**size, tokenizer_path=str(tokenizer_path))).to(device).train()
    return iter1, iter2


def make_update(model, source, clip_ids, dtype, target_fn=None):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def update():
        target = target_fn() if target_fn else None
        with autocast_context(source.device, dtype):
            out = model(source, target=target, clip_ids=clip_ids)
            loss = F.cross_entropy(out["logits"].float(), out["targets"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return update


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    torch.manual_seed(0)
    source = torch.randn(args.batch, int(args.seconds * 16000), device=device) * 0.1
    clip_ids = torch.arange(args.batch, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        iter1, iter2 = build_models(args, device, Path(tmp))
    tokenizer = iter2.tokenizer
    with torch.no_grad():
        labels = tokenizer.extract_labels(source)

    def tokenizer_labels():
        with torch.no_grad():
            tokenizer.extract_labels(source)

    steps = {
        "iter1": make_update(iter1, source, clip_ids, dtype),
        "iter2_on_the_fly": make_update(iter2, source, clip_ids, dtype),
        "iter2_precomputed": make_update(iter2, source, clip_ids, dtype, target_fn=lambda: labels),
        "tokenizer_labels": tokenizer_labels,
    }
    timer = Timer(device)
    for name in VARIANTS:
        for _ in range(args.warmup):
            steps[name]()
    times = {name: [] for name in VARIANTS}
    load_before = load_average()
    for r in range(args.repeats):
        for name in VARIANTS:
            # back to back, the second one timed: every variant finds the allocator as warm as
            # its own previous update left it (the first update after another model's is slower)
            steps[name]()
            start = timer.now()
            steps[name]()
            times[name].append(timer.now() - start)
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in VARIANTS),
              flush=True)

    median = {n: statistics.median(t) for n, t in times.items()}
    rows = []
    print(f"\n{'variant':20s} {'s/update':>9s} {'clips/s':>8s} {'vs precomputed':>15s}")
    for name in VARIANTS:
        ratio = median[name] / median["iter2_precomputed"]
        rows.append({"variant": name, "seconds_median": round(median[name], 4),
                     "seconds_all": [round(t, 4) for t in times[name]],
                     "clips_per_second": round(args.batch / median[name], 3), "ratio_to_precomputed": round(ratio, 3)})
        print(f"{name:20s} {median[name]:9.3f} {args.batch / median[name]:8.2f} {ratio:14.2f}x")
    saved = 1 - median["iter2_precomputed"] / median["iter2_on_the_fly"]
    print(f"\nprecomputed labels save {100 * saved:.0f} % of the iter2 update time")

    result = {
        "benchmark": "pretrain_step", "label": args.label,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "dtype": args.dtype, "model": "tiny" if args.tiny else "BEATs-base (12 layers, width 768) + base tokenizer",
        "batch": args.batch, "seconds_per_clip": args.seconds, "repeats": args.repeats, "warmup": args.warmup,
        "load_average_before": load_before, "load_average_after": load_average(),
        "results": rows, "precomputed_saves_fraction": round(saved, 4),
    }
    out = Path(args.out) if args.out else RESULTS_DIR / f"pretrain_step_{device.type}.json"
    history = []
    if out.is_file():
        old = json.loads(out.read_text())
        history = old.get("history", [])
    history.append({k: result[k] for k in ("date", "commit", "label", "device_name", "dtype", "batch",
                                           "precomputed_saves_fraction")}
                   | {"seconds_median": {r["variant"]: r["seconds_median"] for r in rows}})
    result["history"] = history
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
