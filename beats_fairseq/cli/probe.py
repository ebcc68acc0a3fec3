"""beats-probe: the probes of ``beats_fairseq/probe.py`` on the command line.

    beats-probe --data demo_data --encoder iter1=runs/iter1/checkpoints/checkpoint_last.pt --eval-split test
    beats-probe --data demo_data --encoder iter1=... --probe weighted-layers   # early stopping on --valid-split
"""

import argparse
import logging
import sys

from ..constants import POOLINGS, PROBES
from .common import CliError, add_inference_args, run_main

logger = logging.getLogger("beats_fairseq.probe")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-probe",
        description="Probe of one or more encoders and a randomly initialised one of the same architecture on "
                    "frozen pooled clip features: trained on --train-split, scored on --eval-split (accuracy for "
                    "single-label data, mAP for multi-label).",
    )
    parser.add_argument("--data", required=True, help="folder with {split}.tsv, {split}.{label-ext} (and labels.csv)")
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=CHECKPOINT", required=True,
                        help="encoder to probe (repeatable); any checkpoint beats_fairseq.load reads")
    parser.add_argument("--train-split", default="train", help="split the probe is fit on (default: train)")
    parser.add_argument("--eval-split", default="test", help="held-out split it is scored on (default: test)")
    parser.add_argument("--label-ext", default="lbl", help="label files are {split}.{label-ext} (default: lbl)")
    parser.add_argument("--multilabel", choices=["auto", "yes", "no"], default="auto",
                        help="auto: multi-label for .mlbl label files or when a clip has several class ids "
                             "(default: auto)")
    parser.add_argument("--probe", choices=PROBES, action="append", default=None,
                        help="repeatable; linear: logistic regression on one layer (default); weighted-layers: a learnt "
                             "softmax-weighted sum of all layers and a linear classifier (SUPERB); mlp: one hidden "
                             "layer of 1024 units with dropout on one layer (HEAR). The last two train with Adam and "
                             "stop early on --valid-split")
    parser.add_argument("--valid-split", default="valid",
                        help="split the weighted-layers and mlp probes stop early on (default: valid)")
    parser.add_argument("--no-random-baseline", action="store_true", help="skip the random-init encoder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init encoder (default: 0)")
    parser.add_argument("--pooling", choices=POOLINGS, default="bands",
                        help="clip feature: bands (mean and std over time of each frequency band of patches), mean (of all "
                             "patches) or mean+std (default: bands)")
    parser.add_argument("--layer", type=int, default=None,
                        help="encoder layer to probe, 0-based (default: the last)")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the regression (default: 1)")
    parser.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    add_inference_args(parser, skip_bad=False)
    return parser


def main(argv=None) -> int:
    def run(args):
        from ..evaluation import read_splits
        from ..probe import probe_tables, run_probe
        from .inference import resolve_device

        encoders = {}
        for item in args.encoder:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise CliError(f"--encoder {item!r}: expected NAME=CHECKPOINT")
            encoders[name] = path
        multilabel = {"auto": None, "yes": True, "no": False}[args.multilabel]
        probes = list(dict.fromkeys(args.probe or ["linear"]))
        names = [args.train_split, args.eval_split] + ([args.valid_split] if probes != ["linear"] else [])
        train, evaluated, *valid = read_splits(args.data, names, args.label_ext, multilabel)
        if probes == ["weighted-layers"] and args.layer is not None:
            raise CliError("--layer chooses the layer of the linear and mlp probes; weighted-layers reads them all")
        results = run_probe(encoders, train, evaluated, not args.no_random_baseline, args.seed,
                            resolve_device(args.device), args.batch_size, args.num_workers, args.max_seconds, args.C,
                            not args.no_progress, log=lambda m: logger.info(m), pooling=args.pooling, layer=args.layer,
                            probes=probes, valid=valid[0] if valid else None)
        table = "\n\n".join(t.markdown() for t in probe_tables(results, args.eval_split))
        print(table)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(table + "\n")
        return 0

    return run_main("beats-probe", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
