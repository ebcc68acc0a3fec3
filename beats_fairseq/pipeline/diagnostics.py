"""What the pipeline reports beyond its main evaluation: the tokenizer diagnostics and the probes of ``--eval probe``.

**The probes.** ``--eval probe`` runs every probe of ``beats_fairseq/probe.py`` (``linear``,
``weighted-layers``, ``mlp``) on the same features when the data folder has a labelled ``valid``
split (the other two stop early on it; without one, ``linear`` only). ``summary.json``'s ``probe``
rows carry their ``probe`` (and ``layer_weights`` for weighted-layers); ``evaluation.rows`` are the
linear probe's, and ``evaluation.probes`` holds ``{probe: {encoder: value}}`` for all of them.

**The ``tokenizers`` stage**: how semantic the labels of every iteration are (``beats_fairseq/label_quality.py``).

It runs after the training stages, when the run evaluates (it reads the labelled split
``eval_train_split``; planned by :func:`~.plan.tokenizer_stage`). For each pre-training iteration,
the tokenizer it learnt from: iter1's random projection (rebuilt from the iter1 config), then each
distilled tokenizer (or the one of ``--tokenizer``). Per tokenizer:

* ``purity``, ``nmi`` (and their chance levels ``purity_chance``, ``nmi_chance``) of its patch
  labels against the clip classes of the labelled split (single-label data only);
* for a distilled tokenizer, ``cosine``: its distillation cosine on the validation split (from its
  training log), and ``cosine_baseline``: that of the best constant prediction (the mean
  l2-normalised teacher target over the tokenizer's training split, at most 1,000 clips).

``summary.json`` gets ``tokenizers: {iteration: {"tokenizer", "purity", "nmi", "purity_chance",
"nmi_chance", "patches", "clips", "cosine", "cosine_baseline"}}`` and ``summary.md`` the table; with
several loop seeds, the run's ``summary.json`` holds the mean over the loops of every measure, its
standard deviation ``<measure>_std`` and the number of ``loops`` (:func:`combine_tokenizers`).
"""

import json
from pathlib import Path
from typing import List, Optional

from ..tables import Table
from .config import VALID, PipelineConfig
from .plan import TOKENIZERS, Stage
from .state import State


def run(stage: Stage, ctx, threads: Optional[int] = None) -> dict:
    """The step of the ``tokenizers`` stage (``steps.STEPS``)."""
    from ..label_quality import random_projection_labeller, split_agreement, tokenizer_labeller

    by_name = {d.name: d for d in stage.depends}
    train_split = ctx.splits()[0]
    rows = {}
    with open(stage.log_path, "a", encoding="utf-8") as log:
        for iteration, name in stage.settings["labels"].items():
            source = by_name[name]
            row = {"tokenizer": "random projection" if source.kind == "pretrain" else source.name}
            if not train_split.multilabel:
                labeller = random_projection_labeller(ctx.composer.compose(source).model, ctx.device) \
                    if source.kind == "pretrain" else tokenizer_labeller(str(source.checkpoint), ctx.device)
                row.update(split_agreement(labeller, train_split, ctx.device).as_dict())
            if source.kind == "tokenizer":
                row["cosine_baseline"] = distillation_baseline(source, ctx)
            rows[iteration] = row
            text = f"{iteration} ({row['tokenizer']}): " + ", ".join(
                f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float))
            log.write(text + "\n")
            ctx.say(f"    {text}")
    with open(stage.output, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)
    return {"metrics": {TOKENIZERS: rows}}


def distillation_baseline(tokenizer: Stage, ctx) -> float:
    """The constant-prediction cosine of a tokenizer stage's teacher, on its own training and validation splits."""
    from ..label_quality import cosine_baseline
    from ..loading import load_teacher

    cfg = ctx.composer.compose(tokenizer)
    model, task, dataset = cfg.model, cfg.task, cfg.dataset
    teacher = load_teacher(str(model.teacher_path), str(model.teacher_target), int(model.get("teacher_layer", -1)))
    valid = str(dataset.valid_subset).split(",")[0]
    return cosine_baseline(teacher, f"{task.data}/{dataset.train_subset or 'train'}.tsv", f"{task.data}/{valid}.tsv",
                           ctx.device, int(task.max_sample_size)).cosine


def summary_block(stages: List[Stage], state: State) -> dict:
    """``summary.json``'s ``tokenizers``: the stage's rows with each distilled tokenizer's validation cosine."""
    if not any(s.kind == TOKENIZERS for s in stages):
        return {}
    rows = state.stage(TOKENIZERS).get("metrics", {}).get(TOKENIZERS) or {}
    for row in rows.values():
        valid = state.stage(row["tokenizer"]).get("metrics", {}).get("valid", {}) \
            if row["tokenizer"] in {s.name for s in stages} else {}
        if "cosine" in valid:
            row["cosine"] = valid["cosine"]
    return rows


MEASURES = ("purity", "nmi", "purity_chance", "nmi_chance", "cosine", "cosine_baseline")


def combine_tokenizers(loops: List[dict]) -> dict:
    """The ``tokenizers`` block of several loops: per iteration, the mean of every measure over the loops, its
    standard deviation (``<measure>_std``) and the number of ``loops``."""
    import statistics

    out = {}
    for iteration in dict.fromkeys(name for rows in loops for name in rows):
        rows = [rows[iteration] for rows in loops if iteration in rows]
        combined = {"tokenizer": rows[0]["tokenizer"], "loops": len(rows)}
        for key in MEASURES:
            values = [float(r[key]) for r in rows if r.get(key) is not None]
            if values:
                combined[key] = statistics.fmean(values)
                combined[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out[iteration] = combined
    return out


def table(rows: dict) -> Table:
    """One row per iteration: mean (± std over loops, when combined) and chance level."""
    def value(row, key, chance=None):
        if row.get(key) is None:
            return "-"
        text = f"{row[key]:.3f}" + (f" ± {row[key + '_std']:.3f}" if row.get("loops", 1) > 1 else "")
        return text + (f" ({row[chance]:.3f})" if chance and row.get(chance) is not None else "")

    out = Table(["labels of", "tokenizer", "purity (chance)", "NMI (chance)", "valid cosine", "constant baseline"])
    for name, row in rows.items():
        out.add(name, row["tokenizer"], value(row, "purity", "purity_chance"), value(row, "nmi", "nmi_chance"),
                value(row, "cosine"), value(row, "cosine_baseline"))
    return out


# ---------------------------------------------------------------------------- probes
def valid_split(ctx):
    """The labelled ``valid`` split the probes of :meth:`PipelineConfig.probe_names` stop early on (None: linear only)."""
    from ..evaluation import read_split

    c = ctx.config
    if len(c.probe_names()) == 1:
        return None
    train, data = ctx.splits()[0], Path(c.data_dir)
    return read_split(str(data / f"{VALID}.tsv"), str(data / f"{VALID}.{c.label_ext}"), train.num_classes,
                      train.multilabel, name=VALID)


def probe_block(rows: List[dict]) -> dict:
    """``evaluation.probes``: ``{probe: {encoder: value}}`` of the probe stage's rows."""
    out = {}
    for r in rows:
        out.setdefault(r.get("probe", "linear"), {})[r["encoder"]] = r["value"]
    return out
