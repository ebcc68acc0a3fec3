"""Running the stages in order, skipping finished ones and resuming interrupted ones: :class:`Runner`.

A stage recorded as done in ``RUN_DIR/state.json`` whose output exists is skipped. Any other
runs again: a training stage relaunched with the same ``checkpoint.save_dir`` continues from its
``checkpoint_last.pt`` (fairseq does that). Consecutive evaluation fine-tunings run ``jobs`` at a
time, each with ``OMP_NUM_THREADS`` = cores // jobs; a failed one or Ctrl-C stops the others,
which are recorded as interrupted.
"""

import os
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, List, Optional, Tuple

from omegaconf import OmegaConf

from .compose import Composer
from .config import PipelineConfig, PipelineError
from .launch import fairseq_train_command
from .plan import Stage, plan
from .state import State
from .summary import format_seconds
from .steps import Context, covered, run_step


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def default_jobs() -> int:
    """Evaluation fine-tunings at once: 2 on a machine without a GPU and with 2 or more cores, else 1."""
    return 1 if _cuda() else min(2, cpu_cores())


def resolve_device(name: str) -> str:
    return ("cuda" if _cuda() else "cpu") if name == "auto" else name


class Runner:
    """Runs the stages of ``config`` (default: :func:`~beats_fairseq.pipeline.plan.plan`) in ``RUN_DIR``.

    ``say`` prints the progress lines; ``command`` is what ``state.json`` and the summary record
    as the command of the run (default: the config itself).
    """

    def __init__(self, config: PipelineConfig, stages: Optional[List[Stage]] = None,
                 say: Callable[[str], None] = print, command: Optional[str] = None):
        self.config = config
        self.stages = plan(config) if stages is None else stages
        self.say, self.command = say, command or repr(config)
        self.composer = Composer(config)
        self.state = State(config.run_dir / "state.json")

    def prepare(self) -> List[Stage]:
        """Compose every training stage's config and write it to ``RUN_DIR/<stage>/stage.yaml``."""
        self.composer.compose_all(self.stages)
        for stage in self.stages:
            if stage.training:
                stage.dir.mkdir(parents=True, exist_ok=True)
                OmegaConf.save(stage.config, stage.dir / "stage.yaml")
        return self.stages

    def commands(self, stage: Stage) -> List[str]:
        return fairseq_train_command(stage.dir, stage.hydra_overrides) if stage.training else []

    def run(self) -> dict:
        """Run what is not finished; returns the summary (``RUN_DIR/summary.json``)."""
        from .report import write_summary

        self.composer.compose_all(self.stages)  # every override checked before anything runs
        ctx = Context(self.config, self.composer, resolve_device(self.config.device), self.say)
        jobs = self.config.jobs or default_jobs()
        self.state.started(self.command, [s.name for s in self.stages])
        numbered = list(enumerate(self.stages, start=1))
        i = 0
        while i < len(numbered):
            j = i + 1
            if jobs > 1 and numbered[i][1].score_split:  # a run of evaluation fine-tunings: in parallel
                while j < len(numbered) and numbered[j][1].score_split:
                    j += 1
            todo = [(k, stage) for k, stage in numbered[i:j] if self.needs_running(k, stage)]
            if len(todo) > 1:
                self.run_parallel(ctx, todo, jobs)
            elif todo:
                self.run_one(ctx, *todo[0])
            i = j
        return write_summary(self.config, self.stages, self.state, self.command, self.say)

    def head(self, k: int, stage: Stage) -> str:
        return f"[stage {k}/{len(self.stages)}] {stage.name}"

    def needs_running(self, k: int, stage: Stage) -> bool:
        """False (and says why) for a stage that finished earlier."""
        entry, head = self.state.stage(stage.name), self.head(k, stage)
        key = covered(stage, self.config)
        # "probed": the name in state files written before the tokenizers stage recorded what it covered
        if key is not None and entry["status"] == "done" and entry.get("covered", entry.get("probed")) != key:
            what = "encoders or probe options" if stage.kind == "probe" else "iterations or labelled split"
            self.say(f"{head}: {what} changed since it last ran; running it again")
            entry.update(status="pending", seconds=0.0)
        if entry["status"] == "done" and stage.output.exists():
            if stage.training and entry.get("config") not in (None, OmegaConf.to_yaml(stage.config)):
                self.say(f"{head}: finished earlier with another config; kept (delete {stage.dir} to redo it)")
            else:
                self.say(f"{head}: finished earlier ({format_seconds(entry.get('seconds', 0))}), skipped")
            return False
        if entry["status"] == "done":
            self.say(f"{head}: marked finished but {stage.output} is missing; running it again")
        return True

    def run_one(self, ctx: Context, k: int, stage: Stage, threads: Optional[int] = None) -> None:
        entry, head = self.state.stage(stage.name), self.head(k, stage)
        resumed = entry["status"] in ("running", "failed", "interrupted")
        self.say(f"{head} {stage.title}" + (" (resuming)" if resumed else "") + " ...")
        missing = [d.name for d in stage.depends if not d.output.exists()]
        if missing:
            raise PipelineError(f"stage {stage.name} needs the output of {', '.join(missing)}, which is missing")
        self.state.update(stage.name, status="running")
        start = time.time()
        try:
            result = run_step(stage, ctx, threads)
        except BaseException as error:
            interrupted = isinstance(error, KeyboardInterrupt) or ctx.children.stopping.is_set()
            self.state.update(stage.name, status="interrupted" if interrupted else "failed",
                              seconds=entry.get("seconds", 0.0) + time.time() - start)
            if interrupted:
                self.say(f"{head} interrupted: run the same command again to resume")
            raise
        entry = self.state.update(stage.name, **result, status="done", seconds=entry.get("seconds", 0.0) + time.time()
                                  - start, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        self.say(f"{head} done in {format_seconds(entry['seconds'])}")

    def run_parallel(self, ctx: Context, todo: List[Tuple[int, Stage]], jobs: int) -> None:
        """``jobs`` evaluation fine-tunings at once, each with ``OMP_NUM_THREADS`` = cores // jobs."""
        import torch

        jobs = min(jobs, len(todo))
        threads = None if os.environ.get("OMP_NUM_THREADS") else max(1, cpu_cores() // jobs)
        self.say(f"running {len(todo)} evaluation fine-tunings, {jobs} at a time"
                 + (f" ({threads} thread{'s' if threads > 1 else ''} each)" if threads else ""))
        torch_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)  # the scoring, in this process
        pool = ThreadPoolExecutor(max_workers=jobs)
        futures = [pool.submit(self.run_one, ctx, k, stage, threads) for k, stage in todo]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                ctx.children.stop()
                raise failed[0].exception()
        except BaseException:
            ctx.children.stop()
            for f in futures:
                f.cancel()
            wait(futures)
            raise
        finally:
            pool.shutdown(wait=True)
            torch.set_num_threads(torch_threads)
