#!/usr/bin/env python
"""Training-update time, FLOPs and MFU: pre-training (iter1, iter2 labels on the fly or precomputed,
K masked views) and fine-tuning, with a profile of where an update's time goes.

A pre-training update is what ``beats_pretraining`` + ``beats_mam`` do per batch: ``BeatsModel``
forward (fbank, labels, 75 % masking, encoder on the visible patches, label predictor),
cross-entropy on the masked patches, backward and an optimizer step (``beats_adam``, the paper-scale
recipes' optimizer). Variants:

* ``iter1``: labels from the random-projection tokenizer;
* ``iter2_on_the_fly``: a frozen trained tokenizer (BEATs-base size, random weights: speed does
  not depend on them) runs on every batch (``model.tokenizer_path``);
* ``iter2_precomputed``: the same labels handed in as ``target`` (``task.precomputed_labels``);
* ``tokenizer_labels``: the tokenizer's ``extract_labels`` alone;
* ``iter1_masks``: iter1 with ``model.num_masks = --num-masks`` views per clip;
* ``finetune``: a ``beats_classifier`` step (fbank, encoder on all patches, mean-pooled linear
  head over 527 classes, BCE, backward, ``beats_adam``).

FLOPs per update are counted once per variant with ``FlopCounterMode``, the grouped positional
convolution's backward corrected (``flops.py``). MFU = FLOPs / median seconds / the matrix-multiply
rate measured in the same run (``encoder_mfu.matmul_gflops``, one square product after every
repeat). Timings are interleaved: each repeat runs every variant twice in a row and times the
second (the first update after another model's finds a cold allocator).

    python benchmarks/pretrain_step.py                      # BEATs-base, 2 x 10 s clips, CPU
    python benchmarks/pretrain_step.py --variants iter1 iter1_masks finetune --num-masks 4
    python benchmarks/pretrain_step.py --device cuda --dtype bfloat16 --batch 128 --fit-batch
    python benchmarks/pretrain_step.py --tiny --repeats 1   # smoke test

Results: ``benchmarks/results/pretrain_step_<device>.json`` (latest run + ``history``).
"""

import argparse
import contextlib
import datetime
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from beats_fairseq.loading import load_frozen_tokenizer  # noqa: E402
from beats_fairseq.models.beats import BeatsConfig, BeatsModel  # noqa: E402
from beats_fairseq.models.beats_classifier import BeatsClassifierConfig, BeatsClassifierModel  # noqa: E402
from beats_fairseq.models.beats_tokenizer import BeatsTokenizerConfig, BeatsTokenizerModel  # noqa: E402
from beats_fairseq.tokenizers import FrozenTokenizer  # noqa: E402
from encoder_mfu import (TINY, Timer, autocast_context, cpu_model, git_commit, load_average,  # noqa: E402
                         matmul_gflops, recipe_optimizer, write_json)
from flops import count_flops  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VARIANTS = ("iter1", "iter2_on_the_fly", "iter2_precomputed", "tokenizer_labels", "iter1_masks", "finetune")
DEFAULT_VARIANTS = ("iter1", "iter2_on_the_fly", "iter2_precomputed", "tokenizer_labels")
PRETRAIN_VARIANTS = ("iter1", "iter2_on_the_fly", "iter2_precomputed", "iter1_masks")
FINETUNE_CLASSES = 527


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain_step.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="bfloat16/float16: model under torch.autocast; labels and fbank stay float32 (default: float32)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS),
                   help=f"what to time (default: {' '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--num-masks", type=int, default=4, help="masked views per clip of the iter1_masks variant (default: 4)")
    p.add_argument("--batch", type=int, default=2, help="clips per update (default: 2)")
    p.add_argument("--fit-batch", action="store_true",
                   help="CUDA: halve --batch until a variant's update fits in memory (each variant on its own)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds (default: 10)")
    p.add_argument("--repeats", type=int, default=3, help="timed updates per variant (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates per variant first (default: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="side of the square matmul used as the peak (default 3072 on CPU, 8192 on CUDA)")
    p.add_argument("--attention-backend", default="sdpa", choices=["sdpa", "flex"],
                   help="model.attention_backend of the pre-training models (flex needs CUDA for training)")
    p.add_argument("--compile", action="store_true", help="model.torch_compile: torch.compile every Transformer layer")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the profile (one extra update per variant timed by synchronised sections)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (and MFU)")
    p.add_argument("--tiny", action="store_true", help="2-layer width-64 models (smoke test)")
    p.add_argument("--label", default="", help="what this run is about (kept in the JSON history)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/pretrain_step_<device>.json)")
    return p


# ------------------------------------------------------------------------------------ sections
class Sections:
    """Synchronised wall time per named section; a no-op unless ``active`` (the timed updates)."""

    def __init__(self, timer: Timer):
        self.timer, self.active, self.seconds = timer, False, {}

    @contextlib.contextmanager
    def __call__(self, name):
        if not self.active:
            yield
            return
        start = self.timer.now()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + self.timer.now() - start

    def wrap_method(self, obj, attr, name):
        original = getattr(obj, attr)

        def wrapped(*args, **kwargs):
            with self(name):
                return original(*args, **kwargs)
        setattr(obj, attr, wrapped)

    def wrap_module(self, module, name):
        self.wrap_method(module, "forward", name)


def backbone_sections(backbone, sections: Sections) -> None:
    """The sections every model shares: front end and encoder."""
    sections.wrap_method(backbone, "fbank", "fbank")
    sections.wrap_method(backbone, "embed_patches", "patch_embedding")
    sections.wrap_method(backbone, "project", "patch_embedding")
    sections.wrap_module(backbone.encoder, "encoder_total")
    sections.wrap_module(backbone.encoder.pos_conv, "encoder_pos_conv")


def pretrain_sections(model: BeatsModel, sections: Sections) -> None:
    backbone_sections(model.backbone, sections)
    sections.wrap_method(model, "compute_labels", "labels")
    sections.wrap_method(model, "sample_visible", "mask_noise")
    sections.wrap_module(model.label_predictor, "predictor_total")
    sections.wrap_module(model.label_predictor.pos_conv, "predictor_pos_conv")
    sections.wrap_module(model.label_head, "head")


def finetune_sections(model: BeatsClassifierModel, sections: Sections) -> None:
    backbone_sections(model.backbone, sections)
    sections.wrap_module(model.head, "head")


def shares(seconds: dict) -> dict:
    """Exclusive seconds per part of one update, from the (nested) section times."""
    s = dict(seconds)
    out = {key: s.get(key, 0.0) for key in ("fbank", "labels", "patch_embedding", "mask_noise")}
    out["encoder_pos_conv_full_length"] = s.get("encoder_pos_conv", 0.0)
    out["encoder_layers"] = s.get("encoder_total", 0.0) - out["encoder_pos_conv_full_length"]
    out["predictor_pos_conv"] = s.get("predictor_pos_conv", 0.0)
    out["predictor_layers"] = s.get("predictor_total", 0.0) - out["predictor_pos_conv"]
    out["head"] = s.get("head", 0.0)
    # the rest of the forward: gathers/scatters of the visible patches and views, masks, pooling
    out["gather_scatter_rest_of_forward"] = max(0.0, s.get("forward", 0.0) - sum(out.values()))
    for key in ("loss", "backward", "optimizer"):
        out[key] = s.get(key, 0.0)
    total = s.get("update", sum(out.values()))
    out["other"] = max(0.0, total - sum(out.values()))
    out = {k: v for k, v in out.items() if v > 0 or k in ("backward", "optimizer")}
    return {"seconds": {k: round(v, 5) for k, v in out.items()}, "update_seconds": round(total, 5),
            "share": {k: round(v / total, 4) for k, v in out.items()} if total > 0 else {}}


# ------------------------------------------------------------------------------------ models
def model_size(args) -> dict:
    return dict(TINY) if args.tiny else {}


def pretrain_model(args, device, **extra) -> BeatsModel:
    cfg = BeatsConfig(**model_size(args), attention_backend=args.attention_backend, torch_compile=args.compile,
                      **({"attention_dropout": 0.0} if args.attention_backend == "flex" else {}), **extra)
    return with_tokenizer(BeatsModel(cfg)).to(device).train()


def with_tokenizer(model: BeatsModel) -> BeatsModel:
    """iter2: attach the frozen tokenizer of ``tokenizer_path``, as the beats_pretraining task does."""
    path = model.cfg.tokenizer_path
    if path:
        model.set_tokenizer(FrozenTokenizer(load_frozen_tokenizer(path), source=path))
    return model


def finetune_model(args, device) -> BeatsClassifierModel:
    cfg = BeatsClassifierConfig(**model_size(args), num_classes=FINETUNE_CLASSES,
                                **({"attention_dropout": 0.0} if args.attention_backend == "flex" else {}))
    model = BeatsClassifierModel(cfg).to(device).train()
    model.backbone.encoder.set_attention_backend(args.attention_backend)
    if args.compile:
        model.backbone.encoder.compile_layers()
    return model


def pretrain_update(model, source, clip_ids, dtype, sections, target_fn=None):
    optimizer = recipe_optimizer([p for p in model.parameters() if p.requires_grad])

    def update():
        with sections("update"):
            target = target_fn() if target_fn else None
            with autocast_context(source.device, dtype):
                with sections("forward"):
                    out = model(source, target=target, clip_ids=clip_ids)
                with sections("loss"):
                    loss = F.cross_entropy(out["logits"].float(), out["targets"])
            optimizer.zero_grad(set_to_none=True)
            with sections("backward"):
                loss.backward()
            with sections("optimizer"):
                optimizer.step()
    return update


def finetune_update(model, source, clip_ids, dtype, sections):
    optimizer = recipe_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(0)
    target = (torch.rand(source.size(0), FINETUNE_CLASSES, generator=generator) < 0.02).float().to(source.device)

    def update():
        with sections("update"):
            with autocast_context(source.device, dtype):
                with sections("forward"):
                    logits, _, targets = model(source, target=target, clip_ids=clip_ids)
                with sections("loss"):
                    loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            with sections("backward"):
                loss.backward()
            with sections("optimizer"):
                optimizer.step()
    return update


class Variant:
    """One thing to time: its update closure, its batch, FLOPs and views per update."""

    def __init__(self, name, step, batch, views, sections=None, flop_step=None):
        self.name, self.step, self.batch, self.views = name, step, batch, views
        self.sections, self.flop_step = sections, flop_step or step
        self.times, self.flops, self.profile, self.peak_memory_gb = [], None, None, None


def build_variant(name, args, device, dtype, batch, timer, tokenizer_path) -> Variant:
    torch.manual_seed(0)
    source = torch.randn(batch, int(args.seconds * 16000), device=device) * 0.1
    clip_ids = torch.arange(batch, device=device)
    sections = Sections(timer)
    eager_sdpa = args.attention_backend == "sdpa" and not args.compile
    if name == "finetune":
        model = finetune_model(args, device)
        finetune_sections(model, sections)
        flop_step = None
        if not eager_sdpa:  # FLOPs of the same maths, counted on an eager SDPA copy (torch counts neither)
            plain = BeatsClassifierModel(BeatsClassifierConfig(**model_size(args), num_classes=FINETUNE_CLASSES))
            flop_step = finetune_update(plain.to(device).train(), source, clip_ids, dtype, Sections(timer))
        return Variant(name, finetune_update(model, source, clip_ids, dtype, sections), batch, 1, sections, flop_step)
    if name == "tokenizer_labels":
        tokenizer = load_frozen_tokenizer(tokenizer_path).to(device)

        def labels_only():
            with torch.no_grad():
                tokenizer.extract_labels(source)
        return Variant(name, labels_only, batch, 1)
    extra = {"num_masks": args.num_masks} if name == "iter1_masks" else {}
    if name.startswith("iter2"):
        extra["tokenizer_path"] = tokenizer_path
    model = pretrain_model(args, device, **extra)
    pretrain_sections(model, sections)
    target_fn = None
    if name == "iter2_precomputed":
        with torch.no_grad():
            labels = model.frozen_tokenizer(source)
        target_fn = lambda: labels  # noqa: E731
    step = pretrain_update(model, source, clip_ids, dtype, sections, target_fn)
    flop_step = None
    if not eager_sdpa:  # FLOPs of the same maths, counted on an eager SDPA copy
        plain = with_tokenizer(BeatsModel(BeatsConfig(**model_size(args), **extra))).to(device).train()
        flop_step = pretrain_update(plain, source, clip_ids, dtype, Sections(timer), target_fn)
    return Variant(name, step, batch, extra.get("num_masks", 1), sections, flop_step)


def fit_variant(name, args, device, dtype, timer, tokenizer_path) -> Variant:
    """Build the variant and run its warm-up; with --fit-batch on CUDA, halve the batch on OOM."""
    batch = args.batch
    while True:
        try:
            variant = build_variant(name, args, device, dtype, batch, timer, tokenizer_path)
            for _ in range(max(1, args.warmup) if args.fit_batch else args.warmup):
                variant.step()
            return variant
        except torch.cuda.OutOfMemoryError:
            if not (args.fit_batch and batch > 1):
                raise
            variant = None
            torch.cuda.empty_cache()
            batch //= 2
            print(f"{name}: out of memory, batch -> {batch}", flush=True)


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    if args.num_masks < 1:
        print(f"--num-masks {args.num_masks}: must be at least 1", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    timer = Timer(device)
    names = list(dict.fromkeys(args.variants))
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_path = str(Path(tmp) / "tokenizer.pt")
        if any(n.startswith("iter2") or n == "tokenizer_labels" for n in names):
            torch.manual_seed(0)
            tokenizer = BeatsTokenizerModel(BeatsTokenizerConfig(**model_size(args), kmeans_init=False,
                                                                 estimator_layers=0))
            torch.save(tokenizer.to_official(), tokenizer_path)
        for name in names:
            variants[name] = fit_variant(name, args, device, dtype, timer, tokenizer_path)
            print(f"built {name} (batch {variants[name].batch})", flush=True)

    if not args.no_flops:
        for v in variants.values():
            v.flops = count_flops(v.flop_step)
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 3072)
    matmul_calls = 10 if device.type == "cuda" else 1
    peaks = []
    load_before = load_average()
    for r in range(args.repeats):
        for v in variants.values():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            v.step()  # back to back, the second one timed (see the module docstring)
            start = timer.now()
            v.step()
            v.times.append(timer.now() - start)
            if device.type == "cuda":
                v.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
        peaks.append(matmul_gflops(matmul_size, device, dtype, timer, matmul_calls))
        print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{v.name} {v.times[-1]:.3f} s" for v in variants.values())
              + f"; matmul {peaks[-1]:.0f} GFLOP/s", flush=True)
    if not args.no_profile:
        for v in variants.values():
            if v.sections is not None:
                v.sections.active = True
                v.step()
                v.sections.active = False
                v.profile = shares(v.sections.seconds)

    result = report(args, device, variants, peaks, matmul_size, load_before)
    out = Path(args.out) if args.out else RESULTS_DIR / f"pretrain_step_{device.type}.json"
    entry = ({k: result[k] for k in ("date", "commit", "label", "device_name", "dtype", "matmul_gflops")}
             | {"seconds_median": {r["variant"]: r["seconds_median"] for r in result["results"]},
                "batch": {r["variant"]: r["batch"] for r in result["results"]},
                "mfu": {r["variant"]: r.get("mfu") for r in result["results"]}})
    write_json(out, result, entry=entry)
    print(f"results: {out}")
    return 0


def report(args, device, variants, peaks, matmul_size, load_before) -> dict:
    peak = statistics.median(peaks)
    rows = []
    print(f"\n{'variant':18s} {'batch':>5s} {'s/update':>9s} {'clips/s':>8s} {'views/s':>8s} {'GFLOP':>9s} "
          f"{'MFU':>6s}")
    for v in variants.values():
        median = statistics.median(v.times)
        row = {"variant": v.name, "batch": v.batch, "views_per_clip": v.views, "seconds_median": round(median, 5),
               "seconds_all": [round(t, 5) for t in v.times], "clips_per_second": round(v.batch / median, 3),
               "views_per_second": round(v.batch * v.views / median, 3)}
        if v.flops is not None:
            row["flops"] = v.flops
            row["mfu"] = round(v.flops["gflop"] / median / peak, 4)
        if v.peak_memory_gb is not None:
            row["peak_memory_gb"] = round(v.peak_memory_gb, 2)
        if v.profile is not None:
            row["profile"] = v.profile
        rows.append(row)
        gflop = f"{v.flops['gflop']:9.1f}" if v.flops else f"{'-':>9s}"
        mfu = f"{100 * row['mfu']:5.1f}%" if "mfu" in row else f"{'-':>6s}"
        print(f"{v.name:18s} {v.batch:5d} {median:9.3f} {row['clips_per_second']:8.2f} {row['views_per_second']:8.2f} "
              f"{gflop} {mfu}")
    print(f"matmul peak ({matmul_size}^2, {args.dtype}): {peak:.1f} GFLOP/s (median of {len(peaks)})")
    by_name = {r["variant"]: r for r in rows}
    extra = {}
    if "iter2_on_the_fly" in by_name and "iter2_precomputed" in by_name:
        saved = 1 - by_name["iter2_precomputed"]["seconds_median"] / by_name["iter2_on_the_fly"]["seconds_median"]
        extra["precomputed_saves_fraction"] = round(saved, 4)
        print(f"precomputed labels save {100 * saved:.0f} % of the iter2 update time")
    if "iter1" in by_name and "iter1_masks" in by_name:
        gain = by_name["iter1_masks"]["views_per_second"] / by_name["iter1"]["views_per_second"]
        extra["masked_views_per_second_vs_one_mask"] = round(gain, 3)
        print(f"num_masks {args.num_masks}: {gain:.2f}x the masked views per second of num_masks 1")
    for row in rows:
        if "flops" in row:
            f = row["flops"]
            print(f"{row['variant']}: {f['gflop']:.1f} GFLOP (FlopCounterMode would say {f['gflop_with_torch_conv_backward']:.1f}:"
                  f" conv backward {f['conv_backward_as_counted_by_torch_gflop']:.1f} -> {f['conv_backward_gflop']:.1f})")
        if "profile" in row:
            p = row["profile"]
            print(f"profile of {row['variant']} (one update, {p['update_seconds']:.3f} s, synchronised sections):")
            for key, share in p["share"].items():
                print(f"  {key:32s} {p['seconds'][key]:8.4f} s  {100 * share:5.1f} %")
    return {
        "benchmark": "pretrain_step", "label": args.label,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "dtype": args.dtype, "model": "tiny" if args.tiny else "BEATs-base (12 layers, width 768) + base tokenizer",
        "attention_backend": args.attention_backend, "compile": args.compile, "num_masks": args.num_masks,
        "seconds_per_clip": args.seconds, "repeats": args.repeats, "warmup": args.warmup,
        "matmul_size": matmul_size, "matmul_gflops": round(peak, 2), "matmul_gflops_all": [round(g, 2) for g in peaks],
        "load_average_before": load_before, "load_average_after": load_average(),
        "results": rows, **extra,
    }


if __name__ == "__main__":
    sys.exit(main())
