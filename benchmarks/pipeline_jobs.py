"""Threads and parallel jobs for the small scale on a CPU: what ``beats-pipeline --jobs`` rests on.

In one run, on one machine, it times with ``fairseq-hydra-train`` and the small recipes
(``examples/*/small.yaml``) on a labelled manifest folder:

1. one iter1 pre-training with torch's default threads and with ``OMP_NUM_THREADS=1``;
2. ``--finetunes`` fine-tunings of that iter1 checkpoint one after another with the default
   threads (``--jobs 1``), then the same fine-tunings ``--jobs`` at a time with
   ``OMP_NUM_THREADS`` = cores // jobs (what ``beats-pipeline --jobs`` does).

It prints a table and writes ``benchmarks/results/pipeline_jobs.json``. Run it on an idle
machine (every number is a wall time)::

    python benchmarks/pipeline_jobs.py --data ../shared/devdata/words
    python benchmarks/pipeline_jobs.py --data demo_data --updates 40 --finetunes 2   # a quick look
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fairseq_train(config_dir: Path, name: str, overrides, threads, log: Path) -> subprocess.Popen:
    """Start one training with ``OMP_NUM_THREADS=threads`` (None: torch's default); its output goes to ``log``."""
    exe = Path(sys.executable).with_name("fairseq-hydra-train")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [str(exe), "--config-dir", str(config_dir), "--config-name", name, *overrides]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    proc.log = log
    return proc


def wait_all(procs, what: str) -> None:
    for proc in procs:
        if proc.wait() != 0:
            sys.exit(f"pipeline_jobs: {what} failed (exit {proc.returncode}); see {proc.log}")


def timed(procs_fn, what: str) -> float:
    start = time.perf_counter()
    wait_all(procs_fn(), what)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="manifest folder with train/valid .tsv and .lbl files")
    parser.add_argument("--updates", type=int, default=None,
                        help="pre-training and fine-tuning updates (default: the small recipes' 600 and 300)")
    parser.add_argument("--finetunes", type=int, default=2, help="fine-tunings per setting (default: 2)")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tunings at once in the parallel setting (default: 2)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pipeline_jobs.json"))
    parser.add_argument("--label", default="", help="a note stored in the JSON")
    args = parser.parse_args()
    data = Path(args.data).resolve()
    if not (data / "train.tsv").is_file():
        sys.exit(f"pipeline_jobs: --data {args.data}: no train.tsv there")
    from beats_fairseq.pipeline.runner import cpu_cores

    cores = cpu_cores()  # what beats-pipeline --jobs divides
    work = Path(tempfile.mkdtemp(prefix="pipeline_jobs_"))
    common = [f"task.data={data}", "common.log_interval=50", "checkpoint.no_epoch_checkpoints=true"]
    pre = [*common]
    ft = [*common]
    if args.updates:
        pre += [f"optimization.max_update={args.updates}", f"lr_scheduler.warmup_updates={max(1, args.updates // 10)}",
                f"checkpoint.save_interval_updates={args.updates}", f"dataset.validate_interval_updates={args.updates}"]
        ft += [f"optimization.max_update={args.updates}",
               f"optimizer.groups.default.lr_scheduler.warmup_updates={max(1, args.updates // 10)}"]
    iter1 = REPO / "examples" / "beats_iter1"
    finetune = REPO / "examples" / "beats_finetune"
    rows = {}
    try:
        for name, threads in (("pretrain_default_threads", None), ("pretrain_1_thread", 1)):
            save = work / name
            rows[name] = timed(lambda: [fairseq_train(iter1, "small", [*pre, f"checkpoint.save_dir={save}"], threads,
                                                      work / f"{name}.log")], name)
            print(f"{name}: {rows[name]:.1f} s", flush=True)
        checkpoint = work / "pretrain_default_threads" / "checkpoint_last.pt"

        def finetunes(tag, threads, at_once):
            def launch(seed):
                save = work / f"{tag}_seed{seed}"
                return fairseq_train(finetune, "small", [*ft, f"checkpoint.save_dir={save}", f"common.seed={seed}",
                                                         f"model.pretrained_path={checkpoint}"], threads,
                                     work / f"{tag}_seed{seed}.log")
            seeds = list(range(1, args.finetunes + 1))
            start = time.perf_counter()
            for k in range(0, len(seeds), at_once):
                wait_all([launch(s) for s in seeds[k:k + at_once]], tag)
            return time.perf_counter() - start

        rows["finetunes_jobs1_default_threads"] = finetunes("serial", None, 1)
        print(f"finetunes, one at a time: {rows['finetunes_jobs1_default_threads']:.1f} s", flush=True)
        per_job = max(1, cores // args.jobs)
        rows[f"finetunes_jobs{args.jobs}_{per_job}_threads"] = finetunes("parallel", per_job, args.jobs)
    except BaseException:
        print(f"pipeline_jobs: the runs' logs are kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    parallel = rows[f"finetunes_jobs{args.jobs}_{per_job}_threads"]
    print(f"\n| setting | wall s | ratio |\n|---|---|---|")
    print(f"| iter1 pre-training, default threads | {rows['pretrain_default_threads']:.1f} | 1.00 |")
    print(f"| iter1 pre-training, OMP_NUM_THREADS=1 | {rows['pretrain_1_thread']:.1f} | "
          f"{rows['pretrain_1_thread'] / rows['pretrain_default_threads']:.2f} |")
    print(f"| {args.finetunes} fine-tunings, one at a time, default threads | "
          f"{rows['finetunes_jobs1_default_threads']:.1f} | 1.00 |")
    print(f"| {args.finetunes} fine-tunings, {args.jobs} at a time, {per_job} thread(s) each | {parallel:.1f} | "
          f"{parallel / rows['finetunes_jobs1_default_threads']:.2f} |")
    result = {"seconds": rows, "cores": cores, "finetunes": args.finetunes, "jobs": args.jobs,
              "updates": args.updates or "recipe", "data": args.data, "label": args.label,
              "machine": platform.processor() or platform.machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
