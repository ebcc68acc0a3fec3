#!/usr/bin/env python
"""One prepared check of the GPU path (run by ``benchmarks/gpu_check.sh``; see benchmarks/README.md).

Steps (each recorded as pass / FAIL / skipped with its numbers; a failing step does not stop the others):

1. ``parity_fp32``: features and gradients of the official small model against the oracle
   (``tests/oracle_checks.py``, the checks of ``tests/test_parity.py``), TF32 off.
2. ``bf16_features``: features under bf16 autocast against fp32, tolerance stated below.
3. ``attention``: which SDPA backend runs with the float bias mask (each backend tried alone,
   timed forward + backward); then a 2-layer encoder through every attention path (SDPA's
   default, each SDPA kernel forced, flex_attention) against SDPA's MATH kernel in float64:
   outputs and every parameter's gradient, in fp32 and under bf16 autocast (CUDA; on CPU flex
   has no backward, so its forward alone).
4. ``training``: ``fairseq-hydra-train`` on the demo corpus for iter1, tokenizer, iter2 and
   fine-tuning, under ``common.bf16`` and (CUDA) ``common.fp16``, plus iter1 under ``common.amp``:
   the run ends, losses are finite and fall, the codebook keeps codes in use.
5. ``throughput``: ``pretrain_step.py`` (iter1, iter2 precomputed, iter1 with 4 masks, fine-tuning
   step) and ``encoder_mfu.py`` (inference), bf16, MFU against the bf16 matmul peak of the same
   run; again with ``attention_backend: flex`` and with ``torch.compile``.

``--tiny`` shrinks everything (tiny models, a few updates, no compile) for a CPU smoke test.
Writes ``gpu_check_<device>.json`` and the benchmark JSONs (``gpu_pretrain_step_*.json``,
``gpu_encoder_mfu_*.json``) into ``--out``, and the training logs into ``--logs`` (default ``--out``/logs).
"""

import argparse
import concurrent.futures
import contextlib
import copy
import datetime
import gc
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks", REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

BF16_FEATURE_TOL = 0.05  # max |bf16 - fp32| / max |fp32| of the features; and per-patch cosine >= 0.99
BF16_MIN_COSINE = 0.99
KERNEL_TOL = 1e-4  # fp32 kernels vs SDPA's MATH kernel: output and gradient differences relative to the largest value
FP32_TOL = 1e-3  # MATH in fp32 vs float64 (2 BEATs-base layers; 1.8e-4 measured on an H200, 3e-7 on CPU)


def build_parser():
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="default: cuda")
    p.add_argument("--tiny", action="store_true", help="smoke mode: tiny models, a few updates, no compile")
    p.add_argument("--oracle", default=str(REPO / "tests" / "data" / "oracle"),
                   help="folder of the official BEATs outputs (default: tests/data/oracle)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where the JSONs and logs go")
    p.add_argument("--logs", default=None, help="where the training logs go (default: OUT/logs)")
    p.add_argument("--steps", nargs="+", default=["parity_fp32", "bf16_features", "attention", "training", "throughput"],
                   help="steps to run (default: all)")
    p.add_argument("--updates", type=int, default=None, help="updates per training run (default 200; tiny: 4)")
    p.add_argument("--precisions", nargs="+", default=None, choices=["bf16", "fp16", "amp"],
                   help="training step: the precisions run (default: bf16, and on CUDA fp16 and amp)")
    p.add_argument("--train-batch", type=int, default=256,
                   help="clips per pre-training/fine-tuning update in the throughput step, halved until it fits")
    p.add_argument("--infer-batch", type=int, default=512, help="clips per inference batch in the throughput step")
    return p


# ------------------------------------------------------------------------------------ steps
def parity_fp32(args, device):
    from oracle_checks import feature_check, gradient_check, oracle_loader

    load = oracle_loader(args.oracle)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    features, gradients = feature_check(load, device), gradient_check(load, device)
    ok = features["features"] <= 1 and features["features_no_mask"] <= 1 and features["padding_mask_exact"]
    ok = ok and gradients["loss"] <= 1 and gradients["gradients"] <= 1
    return ok, {"features": features, "gradients": gradients,
                "rule": "every ratio |ours - official| / (atol + rtol |official|) <= 1 (the CPU test tolerances)"}


def bf16_features(args, device):
    from oracle_checks import build_backbone, oracle_loader

    load = oracle_loader(args.oracle)
    model = build_backbone(load("beats_small")).to(device)
    inputs = load("inputs")
    source, padding = inputs["source"].to(device), inputs["padding_mask"].to(device)
    with torch.no_grad():
        ref, mask = model.extract_features(source, padding)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half, _ = model.extract_features(source, padding)
    valid = ~mask
    ref, half = ref[valid].float(), half[valid].float()
    relative = float((half - ref).abs().max() / ref.abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(half, ref, dim=-1).min())
    return relative <= BF16_FEATURE_TOL and cosine >= BF16_MIN_COSINE, {
        "max_abs_diff_over_max_abs": relative, "min_patch_cosine": cosine,
        "rule": f"max|bf16 - fp32| / max|fp32| <= {BF16_FEATURE_TOL} and every patch's cosine >= {BF16_MIN_COSINE}"}


def attention(args, device):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from beats_fairseq.modules.encoder import TransformerEncoder
    from beats_fairseq.modules.backbone import BeatsBackboneConfig

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch, length = (2, 64) if args.tiny else (16, 496)
    dim, heads = (64, 4) if args.tiny else (768, 12)
    heads_dim = dim // heads
    q, k, v = (torch.randn(batch, heads, length, heads_dim, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    mask = torch.randn(batch, heads, length, length, device=device, dtype=dtype)
    backends = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                seconds = timed(lambda: torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask).sum().backward(), device)
            backends[backend.name] = {"runs": True, "fwd_bwd_ms": round(1e3 * seconds, 3)}
        except Exception as error:  # noqa: BLE001 - "no kernel" errors differ between backends
            backends[backend.name] = {"runs": False, "error": str(error).splitlines()[0][:200]}
    default_ops = kernel_names(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               device)

    # the whole encoder (padding, true positions) through each attention path, in fp32 (TF32 off)
    # against SDPA's MATH kernel in float64: outputs and the gradient of every parameter (a kernel
    # that drops the float mask's gradient shows as a relative difference near 1 on the
    # relative-bias parameters), judged against what MATH itself gives in fp32; then the same
    # under bf16 autocast, judged against what MATH gives in bf16
    cfg = BeatsBackboneConfig(**(dict(encoder_layers=2, encoder_embed_dim=dim, encoder_ffn_embed_dim=2 * dim,
                                     encoder_attention_heads=heads, conv_pos=16) if args.tiny else
                                dict(encoder_layers=2)), dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    encoder = TransformerEncoder(cfg).to(device).train()
    x = torch.randn(batch, length, dim, device=device)
    padding = torch.zeros(batch, length, dtype=torch.bool, device=device)
    padding[-1, length * 3 // 4:] = True
    positions = torch.sort(torch.randperm(2 * length, device=device)[:length]).values.expand(batch, length)
    torch.backends.cuda.matmul.allow_tf32 = False
    grad = device.type == "cuda"  # torch has no flex backward on CPU
    paths = {"sdpa_math": ("sdpa", [SDPBackend.MATH]), "sdpa_default": ("sdpa", None)}
    if device.type == "cuda":
        paths.update(sdpa_efficient=("sdpa", [SDPBackend.EFFICIENT_ATTENTION]),
                     sdpa_cudnn=("sdpa", [SDPBackend.CUDNN_ATTENTION]))
    paths["flex"] = ("flex", None)

    projection = torch.randn(batch, length, dim, device=device, dtype=torch.float64)

    def run_path(backend, kernels, autocast_dtype, model=encoder, inputs=x):
        model.set_attention_backend(backend)
        model.zero_grad(set_to_none=True)
        with sdpa_kernel(kernels) if kernels else contextlib.nullcontext(), \
                torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None), \
                (contextlib.nullcontext() if grad or backend == "sdpa" else torch.no_grad()):
            out, _ = model(inputs, padding, positions=positions, full_length=2 * length)
        if out.requires_grad:  # a fixed random projection of the output, as the oracle's gradient check
            (out.double() * projection).sum().backward()
        return out.detach().double(), {n: p.grad.double().clone() for n, p in model.named_parameters()
                                       if p.grad is not None}

    paths_report, ok = {}, True
    # the reference: MATH in float64
    ref_out, ref_grads = run_path("sdpa", [SDPBackend.MATH], None, copy.deepcopy(encoder).double(), x.double())
    # a parameter's gradient difference relative to its largest value, but to no less than 1e-3 of the
    # largest gradient of the model: at initialisation the gate's gradients are ~1e-10 (its bias is
    # near zero), pure rounding noise that would otherwise read as a large relative difference
    scale = 1e-3 * max(float(g.abs().max()) for g in ref_grads.values()) if ref_grads else 0.0

    def compare(out, grads, ref_out, ref_grads):
        rel = {n: float((grads[n] - g).abs().max() / max(float(g.abs().max()), scale, 1e-30)) if n in grads else 1.0
               for n, g in ref_grads.items()} if grads else {}
        worst = sorted(rel.items(), key=lambda item: -item[1])[:4]
        return {"output_rel_diff": float((out - ref_out).abs().max() / ref_out.abs().max()),
                "gradient_rel_diff": max(rel.values(), default=None), "worst_gradients": dict(worst)}

    half_dtype = torch.bfloat16 if device.type == "cuda" else None
    for name, (backend, kernels) in paths.items():
        try:
            out, grads = run_path(backend, kernels, None)
            entry = {"fp32": compare(out, grads, ref_out, ref_grads)}
            fp32 = entry["fp32"]
            if name == "sdpa_math":  # float32 against float64: rounding only
                fp32["ok"] = fp32["output_rel_diff"] <= FP32_TOL and fp32["gradient_rel_diff"] <= FP32_TOL
            else:  # another kernel: no further from float64 than MATH in float32 is (+ KERNEL_TOL)
                math32 = paths_report["sdpa_math"]["fp32"]
                fp32["ok"] = (fp32["output_rel_diff"] <= math32["output_rel_diff"] + KERNEL_TOL
                              and (not grads or fp32["gradient_rel_diff"] <= math32["gradient_rel_diff"] + KERNEL_TOL))
            ok &= fp32["ok"]
            if half_dtype is not None:
                entry["bf16"] = compare(*run_path(backend, kernels, half_dtype), ref_out, ref_grads)
            entry["ms"] = round(1e3 * timed(lambda: run_encoder(encoder, x, padding, positions, length, dtype,
                                                                grad or backend == "sdpa"), device), 2)
        except Exception as error:  # noqa: BLE001 - a kernel that cannot run this shape is recorded, not fatal
            entry = {"runs": False, "error": f"{type(error).__name__}: {error}".splitlines()[0][:200]}
            ok &= kernels is not None  # the default SDPA and flex must run
        paths_report[name] = entry
    if half_dtype is not None and "bf16" in paths_report["sdpa_math"]:
        # bf16 noise floor: what MATH itself gives in bf16; a path far beyond it lost something
        floor = paths_report["sdpa_math"]["bf16"]["gradient_rel_diff"]
        for name, entry in paths_report.items():
            if "bf16" in entry:
                entry["bf16"]["ok"] = entry["bf16"]["gradient_rel_diff"] <= max(4 * floor, 0.05)
                ok &= entry["bf16"]["ok"] or paths[name][1] is not None  # forced kernels: reported
    encoder.set_attention_backend("sdpa")
    return ok, {"sdpa_float_mask_backends": backends, "sdpa_default_kernels": default_ops,
                "encoder_paths": paths_report, "reference": "sdpa with the MATH kernel in float64",
                "tolerance_fp32": KERNEL_TOL, "gradients_compared": grad, "timing_dtype": str(dtype),
                "shape": [batch, length, dim], "layers": cfg.encoder_layers}


def run_encoder(encoder, x, padding, positions, length, dtype, grad):
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32), \
            (contextlib.nullcontext() if grad else torch.no_grad()):
        out, _ = encoder(x, padding, positions=positions, full_length=2 * length)
    if grad:
        out.float().pow(2).mean().backward()


def timed(fn, device, repeats=5):
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def kernel_names(fn, device):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        fn()
        sync(device)
    names = {e.key for e in prof.key_averages()}
    pattern = re.compile(r"attention|fmha|flash|efficient|cudnn|softmax", re.I)
    return sorted(n for n in names if pattern.search(n))[:12]


# ------------------------------------------------------------------------------------ training
KINDS = ("iter1", "tokenizer", "iter2", "finetune")
CONFIG_DIRS = {"iter1": "beats_iter1", "tokenizer": "beats_tokenizer", "iter2": "beats_iter2",
               "finetune": "beats_finetune"}


def training(args, device):
    from beats_fairseq.data.demo import generate_corpus

    updates = args.updates or (4 if args.tiny else 200)
    precisions = args.precisions or ["bf16"] + (["fp16", "amp"] if device.type == "cuda" else [])
    logs = Path(args.logs) if args.logs else Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo_data"
        with contextlib.redirect_stdout(io.StringIO()):
            generate_corpus(str(data), num_train=48 if args.tiny else 240, num_valid=16 if args.tiny else 60,
                            num_test=0, seconds=1.0 if args.tiny else 3.0, seed=0)

        def chain(precision):
            """iter1 -> tokenizer -> iter2 and iter1 -> fine-tuning under one precision (amp: iter1 alone)."""
            runs, ckpt = {}, {}
            for kind in ("iter1",) if precision == "amp" else KINDS:
                name = f"{kind}_{precision}"
                needs = {"tokenizer": "iter1", "iter2": "tokenizer", "finetune": "iter1"}.get(kind)
                if needs and needs not in ckpt:
                    runs[name] = {"status": "skipped", "why": f"{needs}_{precision} did not finish"}
                    continue
                save = Path(tmp) / name
                extra = {"tokenizer": [f"model.teacher_path={ckpt.get('iter1')}"],
                         "iter2": [f"model.tokenizer_path={ckpt.get('tokenizer')}"],
                         "finetune": [f"model.pretrained_path={ckpt.get('iter1')}"]}.get(kind, [])
                runs[name] = train_run(kind, precision, data, save, updates, extra, logs / f"{name}.log", device)
                print(f"[gpu_check]   {name}: {runs[name]['status']} ({runs[name]['seconds']:.0f} s)", flush=True)
                if (save / "checkpoint_last.pt").is_file():
                    ckpt[kind] = save / "checkpoint_last.pt"
            return runs

        # the precisions' chains are independent: on a GPU they share it side by side (small models)
        workers = len(precisions) if device.type == "cuda" else 1
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            chains = list(pool.map(chain, precisions))
    runs = {name: run for runs_of_one in chains for name, run in runs_of_one.items()}
    ok = all(run["status"] == "pass" for run in runs.values())
    return ok, {"updates_per_run": updates, "parallel_chains": workers, "runs": runs}


def train_run(kind, precision, data, save, updates, extra, log_path, device):
    interval = max(1, updates // 10)
    flag = {"bf16": "common.bf16=true", "fp16": "common.fp16=true", "amp": "common.amp=true"}[precision]
    cmd = [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", str(REPO / "examples" / CONFIG_DIRS[kind]),
           "--config-name", "tiny", f"task.data={data}", f"checkpoint.save_dir={save}", flag,
           f"optimization.max_update={updates}", f"common.log_interval={interval}",
           f"checkpoint.save_interval_updates={updates}", f"common.cpu={'true' if device.type == 'cpu' else 'false'}",
           "dataset.disable_validation=true", *extra]
    start = time.time()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=str(save.parent))
        log, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as error:
        log, rc = (error.stdout or "") + (error.stderr or "") if isinstance(error.stdout, str) else "", "timeout"
    log_path.write_text(log)
    losses = [float(v) for v in re.findall(r"\[train_inner\]\[INFO\] - epoch .*? loss=([^,\s]+)", log)]
    usage = [float(v) for v in re.findall(r"\[train_inner\]\[INFO\] - epoch .*? code_usage=([^,\s]+)", log)]
    overflows = len(re.findall(r"overflow detected|NaN or Inf found", log))
    run = {"seconds": round(time.time() - start, 1), "returncode": rc, "losses": losses, "code_usage": usage,
           "overflow_messages": overflows, "log": str(log_path)}
    problems = []
    if rc != 0:
        problems.append(f"exit {rc}: {log.strip().splitlines()[-1][:300] if log.strip() else 'no output'}")
    if not losses:
        problems.append("no train_inner loss in the log")
    elif not all(math.isfinite(v) for v in losses):
        problems.append("non-finite loss")
    elif updates >= 50 and len(losses) >= 4 and not sum(losses[-2:]) < sum(losses[:2]):
        problems.append(f"loss did not fall ({losses[0]} -> {losses[-1]})")
    if kind != "finetune" and usage and usage[-1] < (0.3 if updates >= 50 else 0.05):
        problems.append(f"codebook collapsed: code_usage {usage[-1]}")
    if kind != "finetune" and not usage and rc == 0:
        problems.append("no code_usage in the log")
    if overflows > updates // 5:
        problems.append(f"{overflows} overflow messages in {updates} updates")
    run["status"] = "FAIL" if problems else "pass"
    if problems:
        run["problems"] = problems
    return run


# ------------------------------------------------------------------------------------ throughput
def throughput(args, device):
    import encoder_mfu
    import pretrain_step

    out = Path(args.out)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    tiny = ["--tiny", "--seconds", "1", "--repeats", "1", "--warmup", "0", "--matmul-size", "64"] if args.tiny else \
        ["--repeats", "3", "--warmup", "1"]
    train_batch = "2" if args.tiny else str(args.train_batch)
    infer_batch = "2" if args.tiny else str(args.infer_batch)
    variants = ["iter1", "iter2_precomputed", "iter1_masks", "finetune"]
    configs = [("sdpa", [])]
    if device.type == "cuda":
        configs += [("flex", ["--attention-backend", "flex"])]
        if not args.tiny:
            configs += [("compile", ["--compile"])]
    summary, ok = {}, True
    for name, flags in configs:
        train_variants = variants if name == "sdpa" else ["iter1", "finetune"]
        path = out / f"gpu_pretrain_step_{device.type}_{name}.json"
        argv = ["--device", device.type, "--dtype", dtype, "--batch", train_batch, "--fit-batch",
                "--variants", *train_variants, "--num-masks", "4", *tiny, *flags, "--out", str(path),
                "--label", f"gpu_check {name}"] + ([] if name == "sdpa" else ["--no-profile"])
        summary[f"train_{name}"] = guarded(lambda: pretrain_step.main(argv), path, train_summary)
        print(f"[gpu_check]   train_{name}: {throughput_line(summary[f'train_{name}'])}", flush=True)
        path = out / f"gpu_encoder_mfu_{device.type}_{name}.json"
        argv = ["--device", device.type, "--dtype", dtype, "--batch", infer_batch, "--json", str(path),
                "--no-history", "--no-breakdown", *tiny, *flags, "--label", f"gpu_check {name}"]
        summary[f"inference_{name}"] = guarded(lambda: encoder_mfu.main(argv), path, inference_summary)
        print(f"[gpu_check]   inference_{name}: {throughput_line(summary[f'inference_{name}'])}", flush=True)
        ok &= all(summary[k].get("status") == "pass" for k in (f"train_{name}", f"inference_{name}"))
        free(device)
    return ok, summary


def guarded(fn, path, summarise):
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            rc = fn()
        if isinstance(rc, int) and rc != 0:
            raise RuntimeError(f"exit status {rc}")
        result = summarise(json.loads(Path(path).read_text()))
        result.update(status="pass", json=str(path))
        return result
    except (Exception, SystemExit) as error:  # noqa: BLE001 - one failed measurement must not stop the check
        return {"status": "FAIL", "error": f"{type(error).__name__}: {error}"[:500],
                "output_tail": captured.getvalue()[-1500:]}


def train_summary(data):
    return {"matmul_tflops": round(data["matmul_gflops"] / 1e3, 2),
            "variants": {r["variant"]: {k: r.get(k) for k in ("batch", "seconds_median", "clips_per_second",
                                                              "views_per_second", "mfu", "peak_memory_gb")}
                         for r in data["results"]},
            "profile_iter1": next((r["profile"]["share"] for r in data["results"]
                                   if r["variant"] == "iter1" and "profile" in r), None)}


def inference_summary(data):
    return {"batch": data["batch"], "clips_per_second": round(data["clips_per_s"], 2), "mfu": round(data["mfu"], 4),
            "matmul_tflops": round(data["matmul_gflops"] / 1e3, 2)}


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ main
STEPS = {"parity_fp32": parity_fp32, "bf16_features": bf16_features, "attention": attention, "training": training,
         "throughput": throughput}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        print(f"gpu_check: unknown step(s) {unknown}; choose from {list(STEPS)}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but CUDA is not available (use --device cpu --tiny for the smoke test)",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": device.type, "tiny": args.tiny, "torch": torch.__version__, "cuda": torch.version.cuda,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "oracle": str(Path(args.oracle).resolve()), "steps": {}}
    start_all = time.time()
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    warnings.filterwarnings("ignore", message=".*Profiler clears events.*")
    for name in args.steps:
        start = time.time()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            ok, details = STEPS[name](args, device)
            status = "pass" if ok else "FAIL"
        except Exception as error:  # noqa: BLE001
            status, details = "FAIL", {"error": f"{type(error).__name__}: {error}",
                                       "traceback": traceback.format_exc()[-3000:]}
        report["steps"][name] = {"status": status, "seconds": round(time.time() - start, 1), **details}
        print(f"[gpu_check] {name}: {status} ({time.time() - start:.0f} s)", flush=True)
        free(device)
        report["seconds"] = round(time.time() - start_all, 1)
        # written after every step: a check stopped by a time limit keeps the steps that finished
        path = Path(args.out) / f"gpu_check_{device.type}.json"
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"results: {path}")
    return 0 if all(s["status"] == "pass" for s in report["steps"].values()) else 1


def print_table(report):
    lines = [("step", "status", "what")]
    steps = report["steps"]
    for name, step in steps.items():
        lines.append((name, step["status"], describe(name, step)))
        if name == "training":
            for run, r in step.get("runs", {}).items():
                losses = r.get("losses") or []
                what = (f"loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else r.get("why", "no losses"))
                if r.get("code_usage"):
                    what += f", code usage {r['code_usage'][-1]:.2f}"
                lines.append((f"  {run}", r["status"], what + ("; " + "; ".join(r["problems"]) if "problems" in r else "")))
        if name == "attention":
            for path, r in step.get("encoder_paths", {}).items():
                lines.append((f"  {path}", "ran" if r.get("runs", True) else "no", attention_line(r)))
        if name == "throughput":
            for key, r in step.items():
                if isinstance(r, dict) and "status" in r:
                    lines.append((f"  {key}", r["status"], throughput_line(r)))
    width = max(len(a) for a, _, _ in lines)
    print("-" * 100)
    for a, b, c in lines:
        print(f"{a:<{width}}  {b:<7} {c}")
    print("-" * 100)


def describe(name, step):
    if "error" in step:
        return step["error"][:150]
    if name == "parity_fp32":
        return (f"features {step['features']['features']:.3f}, gradients {step['gradients']['gradients']:.3f} "
                "of the test tolerance")
    if name == "bf16_features":
        return f"max diff {step['max_abs_diff_over_max_abs']:.4f} of max, min cosine {step['min_patch_cosine']:.4f}"
    if name == "attention":
        runs = [k for k, v in step["sdpa_float_mask_backends"].items() if v["runs"]]
        return f"float mask runs on {', '.join(runs)}; encoder paths against float64 MATH below"
    if name == "training":
        return f"{step['updates_per_run']} updates per run"
    return ""


def attention_line(r):
    if not r.get("runs", True):
        return r["error"][:150]

    def one(tag, c):
        grad = "" if c["gradient_rel_diff"] is None else f", grad {c['gradient_rel_diff']:.1e}"
        worst = next(iter(c["worst_gradients"]), None)
        return f"{tag} out {c['output_rel_diff']:.1e}{grad}" + (f" (worst {worst})" if worst and grad else "")

    return "; ".join(one(tag, r[tag]) for tag in ("fp32", "bf16") if tag in r) + f"; {r['ms']:.1f} ms"


def throughput_line(r):
    if r["status"] != "pass":
        return r.get("error", "")[:150]
    if "variants" in r:
        return "; ".join(f"{n} b{v['batch']} {v['views_per_second']:.0f} views/s MFU {100 * (v['mfu'] or 0):.0f}%"
                         for n, v in r["variants"].items())
    return f"b{r['batch']} {r['clips_per_second']:.0f} clips/s MFU {100 * r['mfu']:.0f}%"


if __name__ == "__main__":
    sys.exit(main())
