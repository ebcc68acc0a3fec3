"""beats-precompute-labels: run a frozen trained tokenizer once over manifests and store its labels.

The work is :func:`beats_fairseq.precompute.precompute_labels` (format, validity rules and the
crop of every split are described there and in docs/iterations.md); this module parses the
arguments.

    beats-precompute-labels --tokenizer runs/tok/checkpoint_last.pt --data demo_data \\
        --splits train valid --out runs/iter2/labels --max-sample-size 48000 --crop start

A split whose labels in ``--out`` are already up to date (same manifest, crop, sample rate
and tokenizer) is skipped unless ``--force``.
"""

import argparse
import os
import sys

from ..constants import MIN_SAMPLES_ONE_PATCH
from .common import CliError, run_main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-precompute-labels",
        description="Label every patch of every clip of {split}.tsv manifests with a frozen trained tokenizer and "
                    "write {split}.labels.npy, {split}.offsets.npy and the sidecar {split}.labels.json to --out, "
                    "for pre-training with task.precomputed_labels=OUT. The labels stay valid only for the same "
                    "manifest, crop settings and tokenizer; the task checks that when it loads them.",
    )
    parser.add_argument("--tokenizer", required=True,
                        help="trained tokenizer checkpoint (a beats_tokenizer_training checkpoint or an official "
                             "Tokenizer_*.pt)")
    parser.add_argument("--data", required=True, help="folder with the {split}.tsv manifests (task.data)")
    parser.add_argument("--out", required=True, help="folder to write the labels to (task.precomputed_labels)")
    parser.add_argument("--splits", nargs="+", default=["train", "valid"],
                        help="manifests to label (default: train valid)")
    crop = parser.add_argument_group("clip settings (must equal the pre-training task's)")
    crop.add_argument("--max-sample-size", type=int, default=160000,
                      help="task.max_sample_size: longer clips are cropped to this many samples (default: 160000)")
    crop.add_argument("--crop", choices=["start", "center"], default="start",
                      help="task.crop for training splits (a random crop cannot be precomputed; default: start)")
    crop.add_argument("--min-sample-size", type=int, default=MIN_SAMPLES_ONE_PATCH,
                      help=f"task.min_sample_size (default: {MIN_SAMPLES_ONE_PATCH})")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    run.add_argument("--batch-size", type=int, default=16,
                     help="clips of equal length labelled together (never padded; default: 16)")
    run.add_argument("--num-workers", type=int, default=2, help="DataLoader processes reading audio (default: 2)")
    run.add_argument("--force", action="store_true", help="rewrite labels that are already up to date")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return parser


def run(args) -> int:
    from ..data.label_store import command_line
    from ..precompute import ClipSettings, precompute_labels
    from ..tokenizers import NotATokenizerError
    from .inference import resolve_device

    if args.batch_size <= 0:
        raise CliError(f"--batch-size must be > 0, got {args.batch_size}")
    device = resolve_device(args.device)
    if not os.path.isfile(args.tokenizer):
        raise CliError(f"tokenizer checkpoint {args.tokenizer!r} does not exist")
    clips = ClipSettings(args.max_sample_size, args.min_sample_size, args.crop)
    try:
        precompute_labels(args.tokenizer, args.data, args.out, args.splits, clips, device, args.batch_size,
                          args.num_workers, args.force, not args.no_progress, command_line(args.argv))
    except (NotATokenizerError, RuntimeError) as exc:  # not a tokenizer, or not a checkpoint at all
        raise CliError(str(exc)) from exc
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]

    def run_with_argv(args):
        args.argv = argv  # recorded in the sidecar as the command that rewrites the labels
        return run(args)

    return run_main("beats-precompute-labels", build_parser(), run_with_argv, argv)


if __name__ == "__main__":
    sys.exit(main())
