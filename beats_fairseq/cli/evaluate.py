"""beats-evaluate: mAP (multi-label) or accuracy (single-label) of a classifier on a manifest.

    beats-evaluate CHECKPOINT test.tsv test.mlbl --class-map labels.csv --csv per_class.csv --plot per_class.png

Label ids in the label file are class-map indices when ``--class-map`` is given (the model's
outputs are matched to them by MID if it has an official ``label_dict``, whose order is not
the AudioSet csv order), otherwise model output indices.

The split, the multi-label rule, the metrics and the scoring loop are ``beats_fairseq.evaluation``
(the metrics are those of training's validation); this module parses and prints.
"""

import argparse
import csv
import sys
from pathlib import Path

from ..plots import PER_CLASS_BARS, per_class_chart
from .common import CliError, add_inference_args, run_main


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
                             % (PER_CLASS_BARS // 2, PER_CLASS_BARS // 2, PER_CLASS_BARS))
    add_inference_args(parser)
    return parser


def run(args) -> int:
    import numpy as np

    from ..evaluation import class_columns, classifier_scores, per_class, read_split, score, several_ids
    from .inference import BatchReader, class_table, clips_from_manifest, load_model, model_kind, resolve_device

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device)
    kind = model_kind(model)
    if kind != "classifier":
        raise CliError(f"{args.checkpoint} is a {kind} checkpoint, not a fine-tuned classifier")
    mids, names = class_table(model, None if getattr(model, "label_dict", None) else args.class_map)
    columns = None
    if args.class_map and getattr(model, "label_dict", None):
        try:
            columns, mids, names = class_columns(mids, args.class_map)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    split = read_split(args.manifest, args.labels, num_classes=len(names))
    metric = {"auto": split.metric, "map": "mAP", "accuracy": "accuracy"}[args.metric]
    if metric == "accuracy" and several_ids(split.labels):
        raise CliError(f"{args.labels} has clips with several labels: use --metric map")

    reader = BatchReader(clips_from_manifest(args.manifest), args, device, desc="evaluate")
    positions, scores = classifier_scores(model, reader)
    reader.report()
    if not positions:
        raise CliError("no clip could be read: nothing to evaluate")
    if columns is not None:
        scores = scores[:, columns]
    if args.scores:
        np.save(args.scores, scores)
    kept = split.subset(positions)
    values, counts = per_class(scores, kept, metric)
    if metric == "mAP" and np.isnan(values).all():
        raise CliError(f"no class of {args.labels} has a positive clip: mAP is undefined")
    summary = score(scores, kept, metric).value
    text = f"mAP = {summary:.4f} over {int((counts > 0).sum())} classes with positives" if metric == "mAP" \
        else f"accuracy = {summary:.4f}"
    column = "ap" if metric == "mAP" else "accuracy"
    with open(args.csv, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["index", "mid", "display_name", column, "num_positives"])
        for c in range(len(names)):
            value = "" if np.isnan(values[c]) else f"{values[c]:.6f}"
            writer.writerow([c, mids[c], names[c], value, int(counts[c])])
    skipped = f", {len(reader.skipped)} skipped" if reader.skipped else ""
    if args.plot:
        per_class_chart(args.plot, names, values, counts, "AP" if metric == "mAP" else "accuracy",
                        f"{text}: {'/'.join(Path(args.checkpoint).parts[-3:])}")
    plotted = f", bar chart in {args.plot}" if args.plot else ""
    print(f"{text} ({len(kept)} clips{skipped}); per-class {column} in {args.csv}{plotted}")
    return 0


def main(argv=None) -> int:
    return run_main("beats-evaluate", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
