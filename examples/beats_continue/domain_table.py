"""The table of domain_adaptation.sh: fine-tuned accuracy of the continued, scratch and source models.

    python examples/beats_continue/domain_table.py runs/domain_adaptation

Reads the ``summary.json`` of every loop of ``OUT/continued`` and ``OUT/scratch`` (beats-pipeline
runs; ``seed{k}/`` with several loop seeds) and writes ``OUT/domain_adaptation.md`` and ``.json``:
per label budget, every encoder's mean ± std over loops x fine-tuning seeds, and the paired
differences per loop seed (the mean over that loop's fine-tuning seeds of one minus the other),
with their mean and 95 % Student-t interval over the loops.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

# row of the table -> (run, encoder name in that run's summary)
ROWS = {"random init": ("continued", "random"), "raw fbank": ("continued", "fbank"),
        "source model, no continuation": ("continued", "start"),
        "source model continued on the target pool": ("continued", "iter1"),
        "from scratch on the target pool": ("scratch", "iter1")}
PAIRS = (("source model continued on the target pool", "from scratch on the target pool"),
         ("source model continued on the target pool", "source model, no continuation"),
         ("source model, no continuation", "from scratch on the target pool"))


def loop_summaries(run: Path) -> list:
    """The ``summary.json`` of each loop of ``run``, by loop seed."""
    seeds = sorted(run.glob("seed*/summary.json"), key=lambda p: int(p.parent.name[4:]))
    paths = seeds or [run / "summary.json"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"domain_table: no {missing[0]}: run examples/beats_continue/domain_adaptation.sh first "
                 "(or rerun it to finish)")
    return [json.loads(p.read_text()) for p in paths]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the OUT folder of domain_adaptation.sh")
    args = parser.parse_args(argv)
    from beats_fairseq.pipeline.aggregate import evaluation_row, t_interval

    loops = {run: loop_summaries(args.out / run) for run in ("continued", "scratch")}
    if len(loops["continued"]) != len(loops["scratch"]):
        sys.exit("domain_table: the continued and scratch runs have different numbers of loop seeds")
    first = loops["continued"][0]["evaluation"]
    result = {"metric": first["metric"], "split": first["split"], "loops": len(loops["continued"]), "budgets": {}}
    lines = [f"Fine-tuned {first['metric']} on {first['split']} ({result['loops']} loop seeds):", ""]
    for budget in first["budgets"]:
        per_loop = {row: [statistics.fmean(s["evaluation"]["budgets"][budget]["rows"][name]["runs"])
                          for s in loops[run]] for row, (run, name) in ROWS.items()}
        runs = {row: [v for s in loops[run] for v in s["evaluation"]["budgets"][budget]["rows"][name]["runs"]]
                for row, (run, name) in ROWS.items()}
        rows = {row: evaluation_row(values) for row, values in runs.items()}
        paired = {}
        for a, b in PAIRS:
            diffs = [x - y for x, y in zip(per_loop[a], per_loop[b])]
            paired[f"{a} - {b}"] = {**t_interval(diffs), "runs": diffs}
        result["budgets"][budget] = {"rows": rows, "paired": paired}
        label = "all labels" if budget == "all" else f"{budget} labels per class"
        lines += [f"### {label}", "", "| encoder | mean ± std | runs |", "|---|---|---|"]
        lines += [f"| {row} | {r['mean']:.3f} ± {r['std']:.3f} | {', '.join(f'{v:.3f}' for v in r['runs'])} |"
                  for row, r in rows.items()]
        lines += ["", "| paired difference (per loop seed) | mean | 95 % interval |", "|---|---|---|"]
        for pair, d in paired.items():
            interval = "-" if d["low"] is None else f"[{d['low']:+.3f}, {d['high']:+.3f}]"
            lines.append(f"| {pair} | {d['mean']:+.3f} | {interval} |")
        lines.append("")
    (args.out / "domain_adaptation.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "domain_adaptation.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
