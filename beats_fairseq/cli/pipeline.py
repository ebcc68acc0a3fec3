"""beats-pipeline: the whole BEATs loop on one manifest folder, from one command.

    iter1 pre-training -> tokenizer_iter1 -> iter2 pre-training [-> tokenizer_iter2 -> iter3]
    -> raw-fbank baseline -> evaluation of every iteration's encoder and of a random one

The evaluation (``--eval``) is a linear probe (``probe``, default) or, as in the paper,
fine-tuning (``finetune``): every encoder and a random init are fine-tuned with the same recipe
for ``--eval-seeds`` seeds, each run's best-validation checkpoint is scored on the test split.
The table (mean ± std and every run) goes to ``RUN_DIR/summary.md`` and the ``evaluation`` block
of ``RUN_DIR/summary.json``. The evaluation fine-tunings run ``--jobs`` at a time (default: 2 on a
machine without a GPU and with 2 or more cores), each with ``OMP_NUM_THREADS`` = cores // jobs.

``--supervised-teacher`` (with ``--iterations 3``, the paper's iter3+) first fine-tunes iter2 on the
labelled training split and distils the last tokenizer from that classifier. ``--labels
precomputed`` adds a ``labels_iterN`` stage before iter2+ that writes the tokenizer's labels
to disk once (``beats-precompute-labels``) and pre-trains from them (``task.crop=start``).

Every training stage is a real ``fairseq-hydra-train`` run: its config is composed from the
recipe yaml of ``--scale`` (+ the stage's paths, + the tiny-scale update counts, + the
pass-through overrides) and written to ``RUN_DIR/<stage>/stage.yaml``; the run is launched with
``--config-dir RUN_DIR/<stage> --config-name stage`` and its output tee'd to
``RUN_DIR/<stage>/train.log``; checkpoints are in ``RUN_DIR/<stage>/checkpoints``.
``RUN_DIR/state.json`` records finished stages: running the same command again skips them,
and a stage interrupted mid-way resumes from its own ``checkpoint_last.pt`` (fairseq does that
when relaunched with the same ``save_dir``). At the end a table of every stage (losses, masked
accuracy or distillation cosine, codebook usage, time) and the probe table are printed and
saved to ``RUN_DIR/summary.md`` and ``RUN_DIR/summary.json``; ``RUN_DIR/report.png`` draws every
stage's curves and the evaluation, ``RUN_DIR/report.html`` shows it with the tables. Each
training stage also logs to TensorBoard in ``RUN_DIR/<stage>/tensorboard``.

Pass-through overrides (after the options) use Hydra's ``key=value`` syntax and go to every
stage whose config has the key; ``pretrain:key=value``, ``tokenizer:key=value`` and
``finetune:key=value`` restrict one to a kind of stage; ``+key=value`` adds a missing key.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, List, Optional

from .common import CliError, run_main
from .pipeline_plot import write_report
from .pipeline_report import format_seconds, progress_text, read_metrics, stage_row, stage_table
from .pipeline_stages import (EVAL_MODES, KINDS, RANDOM, RECIPE_ROLES, RECIPES, TINY_UPDATES, Stage, compose,
                              parse_overrides, plan)

STATE_VERSION = 1


def run_logged(cmd: List[str], log_path: Path, echo, threads: Optional[int] = None,
               track: Optional[Callable[[subprocess.Popen, bool], None]] = None) -> int:
    """Run ``cmd``, appending its output to ``log_path``; ``echo(line)`` sees every line.

    ``threads``: the child's ``OMP_NUM_THREADS`` (torch's intra-op threads); ``track(proc, alive)``
    is told when the child starts and ends (so that it can be stopped from another thread).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(shlex.quote(c) for c in cmd)}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1, start_new_session=True)
        if track:
            track(proc, True)
        try:
            for line in proc.stdout:
                log.write(line)
                echo(line.rstrip("\n"))
            return proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            if track:
                track(proc, False)


def fairseq_train_command(config_dir: Path) -> List[str]:
    exe = Path(sys.executable).with_name("fairseq-hydra-train")
    head = [str(exe)] if exe.is_file() else [sys.executable, "-m", "fairseq_cli.hydra_train"]
    return head + ["--config-dir", str(config_dir), "--config-name", "stage"]


# ---------------------------------------------------------------------------- state
class State:
    def __init__(self, path: Path):
        self.path = path
        self.data = {"version": STATE_VERSION, "stages": {}}
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                self.data = json.load(f)

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {"status": "pending", "seconds": 0.0})

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------- runner
class Pipeline:
    def __init__(self, args, stages: List[Stage], overrides):
        self.args, self.stages, self.overrides = args, stages, overrides
        self.run_dir = Path(args.out).resolve()
        self.state = State(self.run_dir / "state.json")
        self.jobs = args.jobs
        self.lock = threading.Lock()  # the state and the children, shared by parallel stages
        self.stopping = threading.Event()
        self.children = set()

    def track(self, proc: subprocess.Popen, alive: bool) -> None:
        with self.lock:
            (self.children.add if alive else self.children.discard)(proc)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def echo_for(self, stage: Stage):
        verbose = self.args.verbose

        def echo(line: str) -> None:
            if verbose:
                print(f"    {line}", flush=True)
                return
            shown = progress_text(line)
            if shown:
                print(f"    {stage.name} {shown}", flush=True)
            elif "Traceback" in line or "Error" in line:
                print(f"    {line}", flush=True)
        return echo

    def run(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = self.state.data
        data.setdefault("runs", []).append({"command": command_string(), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        data["plan"] = [s.name for s in self.stages]
        self.state.save()
        numbered = list(enumerate(self.stages, start=1))
        i = 0
        while i < len(numbered):
            j = i + 1
            if self.jobs > 1 and numbered[i][1].score_split:  # a run of evaluation fine-tunings: in parallel
                while j < len(numbered) and numbered[j][1].score_split:
                    j += 1
            todo = [(k, stage) for k, stage in numbered[i:j] if self.needs_running(k, stage)]
            if len(todo) > 1:
                self.run_parallel(todo)
            elif todo:
                self.run_one(*todo[0])
            i = j
        return self.summarise()

    def head(self, k: int, stage: Stage) -> str:
        return f"[stage {k}/{len(self.stages)}] {stage.name}"

    def needs_running(self, k: int, stage: Stage) -> bool:
        """False (and says why) for a stage that finished earlier; composes a training stage's config."""
        from omegaconf import OmegaConf

        entry, head = self.state.stage(stage.name), self.head(k, stage)
        if stage.kind in KINDS:
            compose(stage, self.args, self.overrides)
        if stage.kind == "probe" and entry["status"] == "done" and entry.get("probed") != self.probe_key(stage):
            self.say(f"{head}: encoders or probe options changed since the last probe; probing again")
            entry.update(status="pending", seconds=0.0)
        if entry["status"] == "done" and stage.output.exists():
            if stage.config is not None and entry.get("config") not in (None, OmegaConf.to_yaml(stage.config)):
                self.say(f"{head}: finished earlier with another config; kept (delete {stage.dir} to redo it)")
            else:
                self.say(f"{head}: finished earlier ({format_seconds(entry.get('seconds', 0))}), skipped")
            return False
        if entry["status"] == "done":
            self.say(f"{head}: marked finished but {stage.output} is missing; running it again")
        return True

    def run_one(self, k: int, stage: Stage, threads: Optional[int] = None) -> None:
        entry, head = self.state.stage(stage.name), self.head(k, stage)
        resumed = entry["status"] in ("running", "failed", "interrupted")
        self.say(f"{head} {stage.title}" + (" (resuming)" if resumed else "") + " ...")
        missing = [d.name for d in stage.depends if not d.output.exists()]
        if missing:
            raise CliError(f"stage {stage.name} needs the output of {', '.join(missing)}, which is missing")
        with self.lock:
            entry["status"] = "running"
            self.state.save()
        start = time.time()
        try:
            self.run_stage(stage, entry, threads)
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt) or self.stopping.is_set()
            with self.lock:
                entry["status"] = "interrupted" if interrupted else "failed"
                entry["seconds"] = entry.get("seconds", 0.0) + time.time() - start
                self.state.save()
            if interrupted:
                self.say(f"{head} interrupted: run the same command again to resume")
            raise
        with self.lock:
            entry["seconds"] = entry.get("seconds", 0.0) + time.time() - start
            entry["status"] = "done"
            entry["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            self.state.save()
        self.say(f"{head} done in {format_seconds(entry['seconds'])}")

    def run_parallel(self, todo) -> None:
        """``--jobs`` evaluation fine-tunings at once, each with ``OMP_NUM_THREADS`` = cores // jobs.

        Ctrl-C (or a failed stage) stops the others; their state says interrupted, and the same
        command resumes them.
        """
        import torch

        jobs = min(self.jobs, len(todo))
        threads = None if os.environ.get("OMP_NUM_THREADS") else max(1, cpu_cores() // jobs)
        self.say(f"running {len(todo)} evaluation fine-tunings, {jobs} at a time"
                 + (f" ({threads} thread{'s' if threads > 1 else ''} each)" if threads else ""))
        torch_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)  # the scoring, in this process
        pool = ThreadPoolExecutor(max_workers=jobs)
        futures = [pool.submit(self.run_one, k, stage, threads) for k, stage in todo]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                self.stop_children()
                raise failed[0].exception()
        except BaseException:
            self.stop_children()
            for f in futures:
                f.cancel()
            wait(futures)
            raise
        finally:
            pool.shutdown(wait=True)
            torch.set_num_threads(torch_threads)

    def stop_children(self) -> None:
        self.stopping.set()
        with self.lock:
            children = list(self.children)
        for proc in children:
            if proc.poll() is None:
                proc.terminate()

    def run_stage(self, stage: Stage, entry: dict, threads: Optional[int] = None) -> None:
        from omegaconf import OmegaConf

        stage.dir.mkdir(parents=True, exist_ok=True)
        if stage.kind in KINDS:
            OmegaConf.save(stage.config, stage.dir / "stage.yaml")
            entry["config"] = OmegaConf.to_yaml(stage.config)
            entry["recipe"] = str(stage.recipe)
            code = run_logged(fairseq_train_command(stage.dir), stage.log_path, self.echo_for(stage), threads,
                              self.track)
            if code != 0:
                raise CliError(f"stage {stage.name} failed (exit status {code}); see {stage.log_path}")
            if not stage.checkpoint.is_file():
                raise CliError(f"stage {stage.name} ended without {stage.checkpoint}; see {stage.log_path}")
            entry["metrics"] = read_metrics(stage.log_path)
            if stage.score_split:
                self.score_finetuned(stage, entry)
        elif stage.kind == "labels":
            self.run_labels(stage, entry)
        elif stage.kind == "fbank":
            self.run_fbank(stage, entry)
        else:
            self.run_probe(stage, entry)

    def device(self) -> str:
        return "cuda" if self.args.device == "auto" and _cuda() else \
            ("cpu" if self.args.device == "auto" else self.args.device)

    def score_finetuned(self, stage: Stage, entry: dict) -> None:
        """Score the run's best-validation checkpoint on the held-out split (``score.json``)."""
        from .pipeline_evaluation import score_classifier

        if not stage.best_checkpoint.is_file():
            raise CliError(f"stage {stage.name} ended without {stage.best_checkpoint} (no validation ran); "
                           f"see {stage.log_path}")
        metric, value = score_classifier(str(stage.best_checkpoint), str(Path(self.args.data).resolve()),
                                         stage.score_split, self.args.probe_label_ext, self.device())
        result = {"encoder": stage.encoder, "seed": int(stage.config.common.seed), "metric": metric,
                  "value": value, "split": stage.score_split,
                  "checkpoint": os.path.relpath(stage.best_checkpoint, self.run_dir)}
        with open(stage.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        entry["metrics"]["score"] = result
        self.say(f"    {stage.name}: {metric} {value:.4f} on {stage.score_split} (best-validation checkpoint)")

    def run_fbank(self, stage: Stage, entry: dict) -> None:
        from .pipeline_evaluation import FBANK_DESCRIPTION, fbank_baseline

        a = self.args
        metric, value = fbank_baseline(str(Path(a.data).resolve()), a.probe_train_split, a.probe_split,
                                       a.probe_label_ext)
        result = {"metric": metric, "value": value, "split": a.probe_split, "train_split": a.probe_train_split,
                  "how": FBANK_DESCRIPTION}
        with open(stage.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        entry["metrics"] = {"fbank": result}
        self.say(f"    fbank baseline: {metric} {value:.4f} on {a.probe_split}")

    def run_labels(self, stage: Stage, entry: dict) -> None:
        tokenizer, pretrain = stage.depends[0], stage.pretrain
        if pretrain.config is None:
            compose(pretrain, self.args, self.overrides)
        task, dataset = pretrain.config.task, pretrain.config.dataset
        splits = [dataset.get("train_subset", "train") or "train"]
        splits += [s for s in str(dataset.get("valid_subset", "valid")).split(",") if s and s not in splits]
        cmd = [sys.executable, "-m", "beats_fairseq.cli.precompute_labels", "--tokenizer", str(tokenizer.checkpoint),
               "--data", str(task.data), "--out", str(stage.output), "--splits", *splits,
               "--max-sample-size", str(task.max_sample_size), "--min-sample-size", str(task.min_sample_size),
               "--sample-rate", str(task.sample_rate), "--crop", str(task.crop), "--no-progress",
               "--device", self.args.device, "--num-workers", str(task_workers(pretrain.config))]
        code = run_logged(cmd, stage.log_path, self.echo_for(stage) if self.args.verbose else lambda line: None)
        if code != 0:
            raise CliError(f"stage {stage.name} failed (exit status {code}); see {stage.log_path}")
        entry["metrics"] = {}

    def run_probe(self, stage: Stage, entry: dict) -> None:
        from ..probe import results_table, run_probe

        encoders = {s.name: str(s.checkpoint) for s in stage.depends}
        with open(stage.log_path, "a", encoding="utf-8") as log:
            def say(message):
                log.write(message + "\n")
                log.flush()
                self.say(f"    {message}")

            results = run_probe(encoders, str(Path(self.args.data).resolve()), self.args.probe_train_split,
                                self.args.probe_split, self.args.probe_label_ext, None, True, seed=0,
                                device=self.device(), log=say, pooling=self.args.probe_pooling,
                                layer=self.args.probe_layer)
        for r in results:  # shown relative to the run folder
            if r.checkpoint.startswith(str(self.run_dir) + os.sep):
                r.checkpoint = os.path.relpath(r.checkpoint, self.run_dir)
        rows = [r.as_dict() for r in results]
        with open(stage.output, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
        (stage.dir / "probe.md").write_text(results_table(results, self.args.probe_split) + "\n", encoding="utf-8")
        entry["metrics"] = {"probe": rows}
        entry["probed"] = self.probe_key(stage)

    def probe_key(self, stage: Stage) -> dict:
        """What a finished probe stage covered: rerun it when this changes (e.g. a new iteration)."""
        a = self.args
        return {"encoders": [d.name for d in stage.depends], "train_split": a.probe_train_split,
                "eval_split": a.probe_split, "label_ext": a.probe_label_ext, "pooling": a.probe_pooling,
                "layer": a.probe_layer}

    # ------------------------------------------------------------------ summary
    def summarise(self) -> dict:
        rows = []
        for stage in self.stages:
            entry = self.state.stage(stage.name)
            rows.append(stage_row(stage, entry))
        probe = self.state.stage("probe").get("metrics", {}).get("probe", []) \
            if not self.args.no_probe and self.args.eval == "probe" else []
        table = stage_table(rows)
        text = [f"# BEATs pipeline: {self.run_dir}", "", f"Command: `{command_string()}`", "", table]
        if probe:
            from ..probe import ProbeResult, results_table

            text += ["", results_table([ProbeResult(**r) for r in probe], self.args.probe_split)]
        evaluation = None if self.args.no_probe else self.evaluation(probe)
        if evaluation:
            from .pipeline_evaluation import evaluation_table

            text += ["", f"Evaluation ({evaluation['how']}):", "", evaluation_table(evaluation)]
        md = "\n".join(text) + "\n"
        (self.run_dir / "summary.md").write_text(md, encoding="utf-8")
        summary = {"command": command_string(), "stages": rows, "probe": probe}
        if evaluation:
            summary["evaluation"] = evaluation
        with open(self.run_dir / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        png, page = write_report(self.run_dir, self.stages, summary, md)
        print("\n" + md + f"\nCurves and evaluation: {png} (with the tables: {page})", flush=True)
        return summary


    def evaluation(self, probe: List[dict]) -> dict:
        """The ``evaluation`` block: fbank, random and every iteration, one value per run."""
        from .pipeline_evaluation import evaluation_block

        runs, metric = {}, None
        fbank = self.state.stage("fbank").get("metrics", {}).get("fbank")
        if self.args.eval == "probe":
            for r in probe:
                runs[r["encoder"]], metric = [r["value"]], r["metric"]
            how = f"linear probe, {self.args.probe_pooling} pooling, " + \
                ("last layer" if self.args.probe_layer is None else f"layer {self.args.probe_layer}")
        else:
            for stage in self.stages:
                score = self.state.stage(stage.name).get("metrics", {}).get("score") if stage.score_split else None
                if score:
                    runs.setdefault(stage.encoder, []).append(score["value"])
                    metric = score["metric"]
            how = f"fine-tuned ({self.args.eval_seeds} seeds), best-validation checkpoint"
        if fbank:
            runs = {**{k: v for k, v in runs.items() if k == RANDOM}, "fbank": [fbank["value"]],
                    **{k: v for k, v in runs.items() if k != RANDOM}}
            metric = metric or fbank["metric"]
        if not runs:
            return {}
        return evaluation_block(metric, self.args.probe_split, runs, how)


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def task_workers(cfg) -> int:
    return int(cfg.dataset.get("num_workers", 0) or 0)


_ARGV: List[str] = []


def command_string() -> str:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    head = ["beats-pipeline"] if prog == "beats-pipeline" else ["python", "-m", "beats_fairseq.cli.pipeline"]
    return " ".join(shlex.quote(a) for a in [*head, *_ARGV])


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-pipeline",
        description="Run the BEATs iterations on a manifest folder: iter1 pre-training -> tokenizer -> iter2 "
                    "pre-training [-> tokenizer -> iter3], each a fairseq-hydra-train run in RUN_DIR/<stage>, then a "
                    "raw-fbank baseline and a linear probe (--eval probe) or fine-tuning runs (--eval finetune) of "
                    "every iteration's encoder beside a random one. Rerunning the same command "
                    "resumes: finished stages are skipped, an interrupted one continues from its checkpoint.",
        epilog="Overrides: key=value (every stage whose recipe has the key), pretrain:key=value, "
               "tokenizer:key=value, finetune:key=value (one kind of stage), +key=value (add a key). Example: "
               "beats-pipeline --data demo_data --out runs/pipeline_tiny pretrain:optimization.max_update=200",
    )
    parser.add_argument("--data", required=True,
                        help="folder with {split}.tsv manifests (train, valid, the probe split) and {split}.lbl labels "
                             "for the probe (and labels.csv)")
    parser.add_argument("--out", required=True, help="run folder (RUN_DIR); reuse it to resume")
    parser.add_argument("--scale", choices=sorted(RECIPES), default="tiny",
                        help="tiny: the tiny recipes with %s updates (CPU, minutes, a smoke test); small: the "
                             "small.yaml recipes (the whole loop with fine-tuning evaluation, sized for a 30-minute budget on "
                             "2 CPU cores for 1,000-3,000 clips of 1-2 s); base: the paper recipes (default: tiny)"
                             % ", ".join(f"{k} {v}" for k, v in TINY_UPDATES.items()))
    parser.add_argument("--iterations", type=int, choices=[2, 3], default=2,
                        help="pre-training iterations (default: 2)")
    parser.add_argument("--supervised-teacher", action="store_true",
                        help="iter3+: fine-tune iter2 on the labelled train split (examples/beats_finetune) and "
                             "distil the last tokenizer from it (needs --iterations 3)")
    parser.add_argument("--labels", choices=["on-the-fly", "precomputed"], default="on-the-fly",
                        help="iter2+ labels: computed by the frozen tokenizer in every update, or precomputed once "
                             "by beats-precompute-labels (then task.crop=start) (default: on-the-fly)")
    parser.add_argument("--probe-split", default="test", help="held-out split the probe is scored on (default: test)")
    parser.add_argument("--probe-train-split", default="train", help="split the probe is fit on (default: train)")
    parser.add_argument("--probe-label-ext", default="lbl",
                        help="probe labels are {split}.{ext} (lbl: single-label accuracy; mlbl: mAP) (default: lbl)")
    parser.add_argument("--eval", choices=EVAL_MODES, default="probe",
                        help="how every encoder (and a random init) is evaluated on --probe-split, beside a raw-fbank "
                             "baseline: probe (logistic regression on frozen features) or finetune (the fine-tuning "
                             "recipe of --scale, --eval-seeds seeds each, best-validation checkpoint) (default: probe)")
    parser.add_argument("--eval-seeds", type=int, default=3, help="fine-tuning seeds per encoder with --eval finetune "
                                                                  "(common.seed 1..N) (default: 3)")
    parser.add_argument("--probe-pooling", choices=["mean", "mean+std"], default="mean",
                        help="--eval probe: clip feature pooled over patches (default: mean)")
    parser.add_argument("--probe-layer", type=int, default=None,
                        help="--eval probe: encoder layer, 0-based (default: the last)")
    parser.add_argument("--no-probe", action="store_true", help="skip the evaluation (and the fbank baseline)")
    for role in RECIPE_ROLES:
        what = "iter3+ tokenizer (--supervised-teacher)" if role == "supervised_tokenizer" else role
        folder = "beats_tokenizer" if role.endswith("tokenizer") else ("beats_finetune" if role == "finetune"
                                                                       else "beats_iterN")
        parser.add_argument(f"--{role.replace('_', '-')}-config", default=None, metavar="NAME",
                            help=f"{what} recipe name in examples/{folder} (default: "
                                 + ", ".join(f"{RECIPES[s][role]} with --scale {s}" for s in sorted(RECIPES)) + ")")
    parser.add_argument("--jobs", type=int, default=None,
                        help="evaluation fine-tunings (--eval finetune) run this many at once, each with "
                             "OMP_NUM_THREADS = CPU cores // JOBS unless OMP_NUM_THREADS is set (default: 2 without "
                             "a GPU on a machine with 2 or more cores, else 1; docs/small_scale.md has the timings)")
    parser.add_argument("--device", default="auto", help="device for labels and the probe (default: auto)")
    parser.add_argument("--verbose", action="store_true", help="echo every line of the stages' logs")
    parser.add_argument("--dry-run", action="store_true",
                        help="write every stage's config and print the plan without running anything")
    parser.add_argument("overrides", nargs="*", help="Hydra-style overrides for the stages (see below)")
    return parser


def run(args) -> int:
    from omegaconf import OmegaConf

    data = Path(args.data)
    if not (data / "train.tsv").is_file():
        raise CliError(f"--data {args.data}: no train.tsv there")
    if args.jobs is None:
        args.jobs = 1 if _cuda() else min(2, cpu_cores())
    if args.jobs < 1:
        raise CliError(f"--jobs {args.jobs}: give 1 or more")
    overrides = parse_overrides(args.overrides)
    run_dir = Path(args.out).resolve()
    stages = plan(args, run_dir)
    for stage in stages:
        if stage.kind in KINDS:
            compose(stage, args, overrides)
    unused = [item for kind, key, _, add, item in overrides if not add and not any(
        s.config is not None and kind in (None, s.kind) and OmegaConf.select(s.config, key, default="__x__") != "__x__"
        for s in stages)]
    if unused:
        raise CliError(f"override(s) {unused} match no key of any stage's recipe (prefix with + to add a key)")
    if args.dry_run:
        for k, stage in enumerate(stages, start=1):
            where = f"{stage.dir}/stage.yaml" if stage.kind in KINDS else str(stage.output)
            print(f"[stage {k}/{len(stages)}] {stage.name}: {stage.title} -> {where}")
            if stage.kind in KINDS:
                stage.dir.mkdir(parents=True, exist_ok=True)
                OmegaConf.save(stage.config, stage.dir / "stage.yaml")
                print("    " + " ".join(shlex.quote(c) for c in fairseq_train_command(stage.dir)))
        return 0
    Pipeline(args, stages, overrides).run()
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    _ARGV[:] = argv
    return run_main("beats-pipeline", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
