"""What each kind of stage does. Each step returns what goes into the stage's ``state.json`` entry.

* training stages (:func:`train`): ``fairseq-hydra-train`` on the stage's composed config
  (``RUN_DIR/<stage>/stage.yaml``), output in ``train.log``, metrics from its TensorBoard events;
  an evaluation fine-tuning then scores its best-validation checkpoint (``score.json``);
* ``labels``: :func:`beats_fairseq.precompute.precompute_labels` with the clip settings of the
  pre-training stage it labels for;
* ``subset``: the labelled train split's subset of a label budget (:mod:`.budgets`);
* ``fbank``: :func:`beats_fairseq.probe.fbank_baseline`;
* ``probe``: :func:`beats_fairseq.probe.run_probe` of every encoder beside a random one (seed 0;
  in loop k of several, seed k).

The fbank baseline and the probe of a label budget fit on its subset (:meth:`Context.train_split`).

The in-process steps run in this process on ``Context.device``; the evaluation splits are read
once per run (:meth:`Context.splits`), so every evaluation uses the same classes and metric.
"""

import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from omegaconf import OmegaConf

from . import diagnostics
from .compose import Composer
from .config import PipelineConfig, PipelineError
from .events import last_metrics, read_curves
from .launch import Children, fairseq_train_command, progress_text, run_logged
from .plan import TOKENIZERS, Stage


@dataclass
class Context:
    config: PipelineConfig
    composer: Composer
    device: str
    say: Callable[[str], None] = print
    children: Children = field(default_factory=Children)
    _splits: Optional[list] = None

    def splits(self):
        """(train split, evaluation split) of the evaluation: :func:`beats_fairseq.evaluation.read_splits`."""
        if self._splits is None:
            from ..evaluation import read_splits

            c = self.config
            self._splits = read_splits(c.data_dir, [c.eval_train_split, c.eval_split], c.label_ext)
        return self._splits

    def train_split(self, stage: Stage):
        """The labelled split an evaluation stage fits on: the train split, or its label budget's subset."""
        from ..evaluation import read_split

        train = self.splits()[0]
        subset = next((d for d in stage.depends if d.kind == "subset"), None)
        if subset is None:
            return train
        manifest = subset.output
        return read_split(str(manifest), str(manifest.with_suffix(f".{self.config.label_ext}")), train.num_classes,
                          train.multilabel, name=manifest.stem)

    def echo(self, stage: Stage) -> Callable[[str], None]:
        """What the console shows of a child's line: progress lines (every line with ``verbose``)."""
        def echo(line: str) -> None:
            if self.config.verbose:
                self.say(f"    {line}")
                return
            shown = progress_text(line)
            if shown:
                self.say(f"    {stage.name} {shown}")
            elif "Traceback" in line or "Error" in line:
                self.say(f"    {line}")
        return echo


def _write_json(path, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)


# ---------------------------------------------------------------------------- training
def train(stage: Stage, ctx: Context, threads: Optional[int] = None) -> dict:
    cfg = ctx.composer.compose(stage)
    OmegaConf.save(cfg, stage.dir / "stage.yaml")
    entry = {"config": OmegaConf.to_yaml(cfg), "recipe": str(ctx.composer.recipe_path(stage))}
    code = run_logged(fairseq_train_command(stage.dir, stage.hydra_overrides), stage.log_path, ctx.echo(stage),
                      threads, ctx.children)
    if code != 0:
        raise PipelineError(f"stage {stage.name} failed (exit status {code}); see {stage.log_path}")
    if not stage.checkpoint.is_file():
        raise PipelineError(f"stage {stage.name} ended without {stage.checkpoint}; see {stage.log_path}")
    entry["metrics"] = last_metrics(read_curves(stage.tensorboard))
    if stage.score_split:
        entry["metrics"]["score"] = score(stage, ctx)
    return entry


def score(stage: Stage, ctx: Context) -> dict:
    """Score the run's best-validation checkpoint on the held-out split (``score.json``)."""
    from ..evaluation import score_classifier

    if not stage.best_checkpoint.is_file():
        raise PipelineError(f"stage {stage.name} ended without {stage.best_checkpoint} (no validation ran); "
                            f"see {stage.log_path}")
    split = ctx.splits()[1]
    metric, value = score_classifier(str(stage.best_checkpoint), split, ctx.device)
    result = {"encoder": stage.encoder, "seed": int(stage.config.common.seed), "metric": metric, "value": value,
              "split": split.name, "checkpoint": os.path.relpath(stage.best_checkpoint, ctx.config.run_dir)}
    _write_json(stage.output, result)
    ctx.say(f"    {stage.name}: {metric} {value:.4f} on {split.name} (best-validation checkpoint)")
    return result


# ---------------------------------------------------------------------------- in this process
class _StageLog(logging.Handler):
    """The library's log lines of an in-process stage, into its log file (and the console with ``verbose``)."""

    def __init__(self, stream, echo: Optional[Callable[[str], None]]):
        super().__init__(logging.INFO)
        self.stream, self.echo = stream, echo

    def emit(self, record) -> None:
        line = self.format(record)
        self.stream.write(line + "\n")
        self.stream.flush()
        if self.echo:
            self.echo(line)


def labels(stage: Stage, ctx: Context, threads: Optional[int] = None) -> dict:
    from ..precompute import ClipSettings, precompute_labels, logger

    tokenizer, pretrain = stage.depends[0], ctx.composer.compose(stage.pretrain)
    task, dataset = pretrain.task, pretrain.dataset
    splits = [dataset.get("train_subset", "train") or "train"]
    splits += [s for s in str(dataset.get("valid_subset", "valid")).split(",") if s and s not in splits]
    clips = ClipSettings(int(task.max_sample_size), int(task.min_sample_size), str(task.crop))
    workers = int(dataset.get("num_workers", 0) or 0)
    # the command that rewrites these labels, for the sidecar's hint
    argv = ["--tokenizer", str(tokenizer.checkpoint), "--data", str(task.data), "--out", str(stage.output),
            "--splits", *splits, "--max-sample-size", str(clips.max_sample_size), "--min-sample-size",
            str(clips.min_sample_size), "--crop", clips.crop, "--num-workers", str(workers)]
    command = "beats-precompute-labels " + shlex.join(argv)
    stage.dir.mkdir(parents=True, exist_ok=True)
    with open(stage.log_path, "a", encoding="utf-8") as log:
        handler, level = _StageLog(log, ctx.echo(stage) if ctx.config.verbose else None), logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)  # its lines go to the log whatever the program's logging says
        try:
            precompute_labels(str(tokenizer.checkpoint), str(task.data), str(stage.output), splits, clips,
                              ctx.device, num_workers=workers, command=command)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
    return {"metrics": {}}


def subset(stage: Stage, ctx: Context, threads: Optional[int] = None) -> dict:
    from .budgets import write_subset

    train = ctx.splits()[0]
    result = write_subset(train, int(stage.budget), int(stage.settings["seed"]), stage.output, ctx.config.label_ext)
    ctx.say(f"    {stage.name}: {result['clips']} clips of {result['classes']} classes from {train.name} "
            f"(seed {result['seed']}) -> {stage.output}")
    return {"metrics": {"subset": result}}


def fbank(stage: Stage, ctx: Context, threads: Optional[int] = None) -> dict:
    from ..probe import FBANK_DESCRIPTION, fbank_baseline

    train_split, eval_split = ctx.train_split(stage), ctx.splits()[1]
    metric, value = fbank_baseline(train_split, eval_split)
    result = {"metric": metric, "value": value, "split": eval_split.name, "train_split": train_split.name,
              "train_clips": len(train_split), "how": FBANK_DESCRIPTION}
    _write_json(stage.output, result)
    ctx.say(f"    {stage.name} baseline: {metric} {value:.4f} on {eval_split.name} ({len(train_split)} training clips)")
    return {"metrics": {"fbank": result}}


def probed_encoders(stage: Stage) -> List[Stage]:
    return [d for d in stage.depends if d.kind != "subset"]


def tokenizers(stage: Stage, ctx: Context, threads: Optional[int] = None) -> dict:
    """The labels of every iteration against the classes (:func:`.diagnostics.run`)."""
    return {**diagnostics.run(stage, ctx, threads), "covered": covered(stage, ctx.config)}


def covered(stage: Stage, config: PipelineConfig) -> Optional[dict]:
    """What a finished probe or tokenizers stage covered (its entry's ``covered``): it runs again when this changes,
    e.g. after ``--iterations`` grew or a probe option changed. None for the other stages."""
    if stage.kind == "probe":
        return {"encoders": [d.name for d in probed_encoders(stage)], "train_split": config.eval_train_split,
                "eval_split": config.eval_split, "label_ext": config.label_ext, "pooling": config.probe_pooling,
                "layer": config.probe_layer, "probes": list(config.probe_names())}
    if stage.kind == TOKENIZERS:
        return {"labels": dict(stage.settings["labels"]), "train_split": config.eval_train_split,
                "label_ext": config.label_ext}
    return None


def probe(stage: Stage, ctx: Context, threads: Optional[int] = None) -> dict:
    from ..probe import probe_tables, run_probe

    config = ctx.config
    encoders = {s.name: str(s.checkpoint) for s in probed_encoders(stage)}
    train_split, eval_split = ctx.train_split(stage), ctx.splits()[1]
    probes, valid = config.probe_names(), diagnostics.valid_split(ctx)
    stage.dir.mkdir(parents=True, exist_ok=True)
    with open(stage.log_path, "a", encoding="utf-8") as log:
        def say(message):
            log.write(message + "\n")
            log.flush()
            ctx.say(f"    {message}")

        results = run_probe(encoders, train_split, eval_split, True, seed=config.loop_seed if config.looped else 0,
                            device=ctx.device, log=say, pooling=config.probe_pooling, layer=config.probe_layer,
                            probes=probes, valid=valid)
    run_dir = str(config.run_dir) + os.sep
    for r in results:  # shown relative to the run folder
        if r.checkpoint.startswith(run_dir):
            r.checkpoint = r.checkpoint[len(run_dir):]
    rows = [r.as_dict() for r in results]
    _write_json(stage.output, rows)
    tables = probe_tables(results, eval_split.name)
    (stage.dir / "probe.md").write_text("\n\n".join(t.markdown() for t in tables) + "\n", encoding="utf-8")
    return {"metrics": {"probe": rows}, "covered": covered(stage, config)}


STEPS: Dict[str, Callable[..., dict]] = {"pretrain": train, "tokenizer": train, "finetune": train, "labels": labels,
                                         "subset": subset, "fbank": fbank, "probe": probe, TOKENIZERS: tokenizers}


def run_step(stage: Stage, ctx: Context, threads: Optional[int] = None) -> dict:
    stage.dir.mkdir(parents=True, exist_ok=True)
    return STEPS[stage.kind](stage, ctx, threads)
