"""beats-evaluate: mAP (multi-label) or accuracy (single-label) of a classifier on a manifest.

    beats-evaluate CHECKPOINT test.tsv test.mlbl --class-map labels.csv --csv per_class.csv --plot per_class.png

Label ids in the label file are class-map indices when ``--class-map`` is given (the model's
outputs are matched to them by MID if it has an official ``label_dict``, whose order is not
the AudioSet csv order), otherwise model output indices.

The metrics are those of training's validation (``beats_fairseq.metrics``).
"""

import argparse
import csv
import logging
import sys
from pathlib import Path

from .common import CliError, add_inference_args, run_main

logger = logging.getLogger("beats_fairseq.cli.evaluate")


# ---------------------------------------------------------------------------- tool
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-evaluate",
        description="Evaluate a fine-tuned classifier (this project's or official) on a labelled manifest: mAP "
                    "(macro over classes with >= 1 positive) for multi-label data, accuracy for single-label data, "
                    "plus a per-class csv.",
    )
    parser.add_argument("checkpoint", help="fine-tuned checkpoint (fairseq beats_classifier or official BEATs)")
    parser.add_argument("manifest", help="fairseq .tsv manifest")
    parser.add_argument("labels", help="label file aligned with the manifest (.lbl / .mlbl: comma-separated class ids)")
    parser.add_argument("--class-map",
                        help="index,mid,display_name csv that the label ids refer to (default: ids are model output "
                             "indices); a model with an official label_dict is matched to it by MID")
    parser.add_argument("--metric", choices=("auto", "map", "accuracy"), default="auto",
                        help="auto: map if the label file is .mlbl or any clip has several labels, else accuracy "
                             "(default: auto)")
    parser.add_argument("--csv", default="per_class.csv",
                        help="per-class results (index, mid, display_name, ap or accuracy, num_positives); "
                             "default: per_class.csv")
    parser.add_argument("--scores", help="also save the (clips x classes) score matrix as .npy (rows: evaluated "
                                         "clips in manifest order, columns: --class-map / output order)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw the per-class AP or accuracy as a sorted bar chart with the class names "
                             "(the %d best and %d worst classes when there are more than %d)"
                             % (PLOT_CLASSES // 2, PLOT_CLASSES // 2, PLOT_CLASSES))
    add_inference_args(parser)
    return parser


PLOT_CLASSES = 60  # most bars drawn by --plot


def plot_per_class(path: str, names, values, counts, metric: str, title: str) -> None:
    """Sorted horizontal bars of the per-class ``values`` (classes without a value are left out)."""
    import numpy as np

    from ..plots import bar_chart, pyplot

    rows = sorted(((float(v), f"{n} ({int(c)})") for n, v, c in zip(names, values, counts) if not np.isnan(v)),
                  reverse=True)
    shown = len(rows)
    if shown > PLOT_CLASSES:
        half = PLOT_CLASSES // 2
        rows = rows[:half] + [(float("nan"), f"... {shown - PLOT_CLASSES} more classes ...")] + rows[-half:]
        title += f": the {half} best and {half} worst of {shown} classes"
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.24 * len(rows)), dpi=100)
    bar_chart(ax, [n for _, n in rows], [v for v, _ in rows], xlabel=f"{metric} (class (clips))")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def align_to_class_map(mids, class_map: str):
    """Model output column for each class-map row (the model's official label_dict MIDs)."""
    import numpy as np

    from ..data.manifest import read_class_map

    rows = read_class_map(class_map)
    column = {m: i for i, m in enumerate(mids)}
    missing = [r["mid"] for r in rows if r["mid"] not in column]
    if missing:
        raise CliError(f"{len(missing)} classes of {class_map} are not outputs of the model "
                       f"(first: {missing[:5]}): the label_dict and the class map do not match")
    return np.asarray([column[r["mid"]] for r in rows]), [r["mid"] for r in rows], [r["display_name"] for r in rows]


def score_clips(model, clips, args, device):
    """(positions of the evaluated clips, probabilities (M, K)), and the reader."""
    import numpy as np
    import torch

    from .inference import BatchReader

    reader = BatchReader(clips, args, device, desc="evaluate")
    positions, blocks = [], []
    with torch.inference_mode():
        for batch in reader:
            probs, _ = model.extract_features(batch.source, batch.padding_mask)
            blocks.append(probs.float().cpu().numpy())
            positions.extend(batch.positions)
    reader.report()
    if not positions:
        raise CliError("no clip could be read: nothing to evaluate")
    return np.asarray(positions), np.concatenate(blocks), reader


def run(args) -> int:
    import numpy as np

    from ..data.manifest import read_label_file
    from ..metrics import accuracy, accuracy_per_class, average_precision_per_class
    from .inference import class_table, clips_from_manifest, load_model, model_kind, resolve_device

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device)
    kind = model_kind(model)
    if kind != "classifier":
        raise CliError(f"{args.checkpoint} is a {kind} checkpoint, not a fine-tuned classifier")
    mids, names = class_table(model, None if getattr(model, "label_dict", None) else args.class_map)
    columns = None
    if args.class_map and getattr(model, "label_dict", None):
        columns, mids, names = align_to_class_map(mids, args.class_map)
    num_classes = len(names)
    clips = clips_from_manifest(args.manifest)
    labels = read_label_file(args.labels, len(clips), num_classes=num_classes)
    multilabel = args.labels.endswith(".mlbl") or any(len(ids) > 1 for ids in labels)
    metric = args.metric if args.metric != "auto" else ("map" if multilabel else "accuracy")
    if metric == "accuracy" and any(len(ids) > 1 for ids in labels):
        raise CliError(f"{args.labels} has clips with several labels: use --metric map")

    positions, scores, reader = score_clips(model, clips, args, device)
    if columns is not None:
        scores = scores[:, columns]
    if args.scores:
        np.save(args.scores, scores)
    kept = [labels[p] for p in positions]

    if metric == "map":
        targets = np.zeros((len(kept), num_classes), dtype=bool)
        for row, ids in enumerate(kept):
            targets[row, ids] = True
        values, counts = average_precision_per_class(scores, targets), targets.sum(axis=0)
        if np.isnan(values).all():
            raise CliError(f"no class of {args.labels} has a positive clip: mAP is undefined")
        summary = float(np.nanmean(values))
        text = f"mAP = {summary:.4f} over {int((counts > 0).sum())} classes with positives"
    else:
        truth = np.asarray([ids[0] for ids in kept])
        values, counts = accuracy_per_class(scores, truth)
        summary = accuracy(scores, truth)
        text = f"accuracy = {summary:.4f}"
    column = "ap" if metric == "map" else "accuracy"
    with open(args.csv, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["index", "mid", "display_name", column, "num_positives"])
        for c in range(num_classes):
            value = "" if np.isnan(values[c]) else f"{values[c]:.6f}"
            writer.writerow([c, mids[c], names[c], value, int(counts[c])])
    skipped = f", {len(reader.skipped)} skipped" if reader.skipped else ""
    if args.plot:
        plot_per_class(args.plot, names, values, counts, "AP" if metric == "map" else "accuracy",
                       f"{text}: {'/'.join(Path(args.checkpoint).parts[-3:])}")
    plotted = f", bar chart in {args.plot}" if args.plot else ""
    print(f"{text} ({len(kept)} clips{skipped}); per-class {column} in {args.csv}{plotted}")
    return 0


def main(argv=None) -> int:
    return run_main("beats-evaluate", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
