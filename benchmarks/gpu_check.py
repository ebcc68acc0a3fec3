#!/usr/bin/env python
"""One prepared check of the GPU path (run by ``benchmarks/gpu_check.sh``; see benchmarks/README.md).

Steps (each recorded as pass / FAIL / skipped with its numbers; a failing step does not stop the others):

1. ``parity_fp32``: features and gradients of the official small model against the oracle
   (``tests/oracle_checks.py``, the checks of ``tests/test_parity.py``), TF32 off.
2. ``bf16_features``: features under bf16 autocast against fp32, tolerance stated below.
3. ``attention``: which SDPA backend runs with the float bias mask (each backend tried alone,
   timed forward + backward), and flex_attention (``attention_backend: flex``) against SDPA:
   outputs and gradients (CUDA; forward only on CPU, where torch has no flex backward).
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
import contextlib
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
FLEX_TOL = 1e-4  # fp32 flex vs SDPA: output and gradient differences relative to the largest value


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

    # flex (score_mod) against SDPA (float mask) in a whole encoder with padding and true positions
    cfg = BeatsBackboneConfig(**(dict(encoder_layers=2, encoder_embed_dim=dim, encoder_ffn_embed_dim=2 * dim,
                                     encoder_attention_heads=heads, conv_pos=16) if args.tiny else
                                dict(encoder_layers=2)), dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    encoder = TransformerEncoder(cfg).to(device).train()
    x = torch.randn(batch, length, dim, device=device)
    padding = torch.zeros(batch, length, dtype=torch.bool, device=device)
    padding[-1, length * 3 // 4:] = True
    positions = torch.sort(torch.randperm(2 * length, device=device)[:length]).values.expand(batch, length)
    # numerics in fp32 (TF32 off), gradients where flex has a backward (CUDA); timing in bf16 on CUDA
    torch.backends.cuda.matmul.allow_tf32 = False
    results, grad = {}, device.type == "cuda"
    for name in ("sdpa", "flex"):
        encoder.set_attention_backend(name)
        encoder.zero_grad(set_to_none=True)
        with contextlib.nullcontext() if grad else torch.no_grad():
            out, _ = encoder(x, padding, positions=positions, full_length=2 * length)
        if grad:
            out.pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
        seconds = timed(lambda: run_encoder(encoder, x, padding, positions, length, dtype, grad), device)
        results[name] = (out.detach(), grads, seconds)
    encoder.set_attention_backend("sdpa")
    (out_s, g_s, t_s), (out_f, g_f, t_f) = results["sdpa"], results["flex"]
    out_diff = float((out_f - out_s).abs().max() / out_s.abs().max())
    grad_diff = max((float((g_f[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)) for n, g in g_s.items()),
                    default=0.0)
    ok = out_diff <= FLEX_TOL and grad_diff <= FLEX_TOL and (not grad or set(g_f) == set(g_s))
    return ok, {"sdpa_float_mask_backends": backends, "sdpa_default_kernels": default_ops,
                "flex_vs_sdpa": {"output_rel_diff": out_diff, "gradient_rel_diff": grad_diff,
                                 "gradients_compared": grad, "tolerance": FLEX_TOL, "numerics_dtype": "float32",
                                 "timing_dtype": str(dtype), "timing": "forward + backward" if grad else "forward",
                                 "encoder_ms": {"sdpa": round(1e3 * t_s, 2), "flex": round(1e3 * t_f, 2)},
                                 "shape": [batch, length, dim], "layers": cfg.encoder_layers}}


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
    precisions = ["bf16"] + (["fp16", "amp"] if device.type == "cuda" else [])
    logs = Path(args.logs) if args.logs else Path(args.out) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs, ok = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo_data"
        with contextlib.redirect_stdout(io.StringIO()):
            generate_corpus(str(data), num_train=48 if args.tiny else 240, num_valid=16 if args.tiny else 60,
                            num_test=0, seconds=1.0 if args.tiny else 3.0, seed=0)
        for precision in precisions:
            kinds = ("iter1",) if precision == "amp" else KINDS
            ckpt = {}
            for kind in kinds:
                name = f"{kind}_{precision}"
                needs = {"tokenizer": "iter1", "iter2": "tokenizer", "finetune": "iter1"}.get(kind)
                if needs and needs not in ckpt:
                    runs[name] = {"status": "skipped", "why": f"{needs}_{precision} did not finish"}
                    ok = False
                    continue
                save = Path(tmp) / name
                extra = {"tokenizer": [f"model.teacher_path={ckpt.get('iter1')}"],
                         "iter2": [f"model.tokenizer_path={ckpt.get('tokenizer')}"],
                         "finetune": [f"model.pretrained_path={ckpt.get('iter1')}"]}.get(kind, [])
                run = train_run(kind, precision, data, save, updates, extra, logs / f"{name}.log", device)
                runs[name] = run
                ok &= run["status"] == "pass"
                if (save / "checkpoint_last.pt").is_file():
                    ckpt[kind] = save / "checkpoint_last.pt"
    return ok, {"updates_per_run": updates, "runs": runs}


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
        path = out / f"gpu_encoder_mfu_{device.type}_{name}.json"
        argv = ["--device", device.type, "--dtype", dtype, "--batch", infer_batch, "--json", str(path),
                "--no-history", "--no-breakdown", *tiny, *flags, "--label", f"gpu_check {name}"]
        summary[f"inference_{name}"] = guarded(lambda: encoder_mfu.main(argv), path, inference_summary)
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
        flex = step["flex_vs_sdpa"]
        return (f"float mask runs on {', '.join(runs)}; flex vs sdpa: out {flex['output_rel_diff']:.1e}, grad "
                f"{flex['gradient_rel_diff']:.1e}, {flex['encoder_ms']['flex']:.1f} vs {flex['encoder_ms']['sdpa']:.1f} ms")
    if name == "training":
        return f"{step['updates_per_run']} updates per run"
    return ""


def throughput_line(r):
    if r["status"] != "pass":
        return r.get("error", "")[:150]
    if "variants" in r:
        return "; ".join(f"{n} b{v['batch']} {v['views_per_second']:.0f} views/s MFU {100 * (v['mfu'] or 0):.0f}%"
                         for n, v in r["variants"].items())
    return f"b{r['batch']} {r['clips_per_second']:.0f} clips/s MFU {100 * r['mfu']:.0f}%"


if __name__ == "__main__":
    sys.exit(main())
