"""Mean over cross-validation folds of the validation metric stored in fairseq checkpoints.

    python examples/beats_finetune/average_folds.py runs/esc50/fold*/checkpoints/checkpoint_last.pt

For each ``checkpoint_last.pt``: the metric of its last validation (``extra_state.val_loss``, the
value of ``checkpoint.best_checkpoint_metric``, e.g. accuracy) and the best one seen
(``extra_state.best``). The paper-style number is the mean of the final values; the mean of
the best values picks the epoch on the test fold and is optimistic.
"""

import argparse
import statistics

from beats_fairseq.checkpoint import read_checkpoint


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoint_last.pt of every fold")
    args = p.parse_args(argv)
    final, best = [], []
    metric = None
    for path in args.checkpoints:
        state = read_checkpoint(path)
        extra = state.get("extra_state") or {}
        metric = state["cfg"]["checkpoint"]["best_checkpoint_metric"]
        final.append(float(extra["val_loss"]))
        best.append(float(extra.get("best", extra["val_loss"])))
        print(f"{path}: final {metric} {final[-1]:.4f}, best {best[-1]:.4f}")
    sd = statistics.stdev(final) if len(final) > 1 else 0.0
    print(f"{len(final)} folds: mean final {metric} {statistics.mean(final):.4f} +- {sd:.4f}; "
          f"mean best {statistics.mean(best):.4f}")


if __name__ == "__main__":
    main()
