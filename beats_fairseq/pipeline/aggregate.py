"""Evaluation over label budgets and loop seeds: the blocks of ``summary.json``, and the paired differences.

A loop's ``evaluation`` block has, per label budget, one value per run of every row (random,
fbank, each iteration): ``budgets[budget]["rows"][name] = {"mean", "std", "runs"}``; ``rows`` is
the largest budget's; ``budgets[budget]["probes"][probe][name]`` the same for the probes run beside
fine-tuning (``--eval finetune --probes ...``). :func:`combine` merges the blocks of several loops: every row's runs are
those of all loops (loops x fine-tuning seeds). :func:`paired` is, per budget, the difference of
iter1 to the random init and to the fbank baseline (``"iter1-random"``, ``"iter1-fbank"``) and of
each later iteration to iter1 (``"iter2-iter1"``): in every loop the mean over its fine-tuning
seeds of one minus that of the other, then the mean of those differences over the loops with a
95 % Student-t interval (``low``, ``high``; None with one loop), ``runs`` the per-loop differences.
"""

import statistics
from typing import Dict, List, Optional

BASE = "iter1"
BASELINES = ("random", "fbank")  # the rows without pre-training, as the evaluation names them


def evaluation_row(runs: List[float]) -> Dict[str, object]:
    runs = [float(v) for v in runs]
    std = statistics.stdev(runs) if len(runs) > 1 else 0.0
    return {"mean": float(statistics.fmean(runs)), "std": float(std), "runs": runs}


def t_interval(values: List[float], level: float = 0.95) -> Dict[str, Optional[float]]:
    """Mean of ``values`` and its Student-t interval (None bounds for fewer than two values)."""
    mean = float(statistics.fmean(values))
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None}
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5
    return {"mean": mean, "low": mean - half, "high": mean + half}


def paired(loops: List[Dict[str, dict]]) -> Dict[str, Dict[str, dict]]:
    """``{budget: {"iter1-random" | "iter1-fbank" | "iterN-iter1": {"mean", "low", "high", "runs"}}}`` from the
    ``budgets`` of every loop."""
    out: Dict[str, Dict[str, dict]] = {}
    for budgets in loops:
        for budget, block in budgets.items():
            rows = block["rows"]
            if BASE not in rows:
                continue
            base = statistics.fmean(rows[BASE]["runs"])
            for name, row in rows.items():
                if name in BASELINES:  # iter1 against what needs no pre-training
                    pair, diff = f"{BASE}-{name}", base - statistics.fmean(row["runs"])
                elif name.startswith("iter") and name != BASE:
                    pair, diff = f"{name}-{BASE}", statistics.fmean(row["runs"]) - base
                else:
                    continue
                out.setdefault(budget, {}).setdefault(pair, []).append(diff)
    return {budget: {pair: {**t_interval(diffs), "runs": diffs} for pair, diffs in pairs.items()}
            for budget, pairs in out.items()}


def evaluation_block(metric: str, split: str, runs: Dict[str, List[float]], how: Optional[str] = None) -> dict:
    """The ``evaluation`` block of one budget (``all``); ``runs``: ``{row name: [value per run]}``, in order."""
    return budget_block(metric, split, {"all": runs}, how)


def budget_block(metric: str, split: str, runs: Dict[str, Dict[str, List[float]]], how: Optional[str] = None,
                 probes: Optional[Dict[str, Dict[str, Dict[str, List[float]]]]] = None) -> dict:
    """The ``evaluation`` block of one loop; ``runs``: ``{budget: {row: [value per run]}}``, budgets smallest
    first, rows in order. ``probes`` (``{budget: {probe: {encoder: [value per loop]}}}``): the probes run beside
    fine-tuning, ``budgets[budget]["probes"][probe][encoder]`` (rows like the others)."""
    budgets = {b: {"rows": {k: evaluation_row(v) for k, v in rows.items() if v}} for b, rows in runs.items()}
    budgets = {b: block for b, block in budgets.items() if block["rows"]}
    for budget, by_probe in (probes or {}).items():
        if budget in budgets and by_probe:
            budgets[budget]["probes"] = {probe: {k: evaluation_row(v) for k, v in rows.items()}
                                         for probe, rows in by_probe.items()}
    block = {"metric": metric, "split": split, "rows": list(budgets.values())[-1]["rows"] if budgets else {}}
    if how:
        block["how"] = how
    block["budgets"] = budgets
    block["paired"] = paired([budgets])
    return block


def combine(blocks: List[dict]) -> dict:
    """One evaluation block from those of several loops (runs of every loop together, paired over loops)."""
    runs: Dict[str, Dict[str, List[float]]] = {}
    probes: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    for block in blocks:
        for budget, part in block["budgets"].items():
            for name, row in part["rows"].items():
                runs.setdefault(budget, {}).setdefault(name, []).extend(row["runs"])
            for probe, rows in part.get("probes", {}).items():
                for name, row in rows.items():
                    probes.setdefault(budget, {}).setdefault(probe, {}).setdefault(name, []).extend(row["runs"])
    first = blocks[0]
    how = f"{first['how']}; {len(blocks)} loop seeds" if first.get("how") else f"{len(blocks)} loop seeds"
    block = budget_block(first["metric"], first["split"], runs, how, probes)
    block["paired"] = paired([b["budgets"] for b in blocks])
    block["loops"] = len(blocks)
    return block
