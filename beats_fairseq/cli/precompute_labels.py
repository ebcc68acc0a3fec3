"""beats-precompute-labels: run a frozen trained tokenizer once over manifests and store its labels.

Iter2+ pre-training then reads them with ``task.precomputed_labels=OUT`` instead of running
the tokenizer in every update (``model.tokenizer_path`` must still name the same tokenizer).
Clips are read and cropped exactly as the ``beats_pretraining`` task does for that split
(training splits: ``--crop``; ``valid*``/``test*``/``eval*``/``dev*``: from the start) and every
clip is labelled alone, without padding. Format and validity rules:
``beats_fairseq/data/label_store.py`` (and docs/iterations.md).

    beats-precompute-labels --tokenizer runs/tok/checkpoint_last.pt --data demo_data \\
        --splits train valid --out runs/iter2/labels --max-sample-size 48000 --crop start

A split whose labels in ``--out`` are already up to date (same manifest, crop, sample rate
and tokenizer) is skipped unless ``--force``.
"""

import argparse
import logging
import os
import sys
import time
from collections import defaultdict

from ..constants import MIN_SAMPLES_ONE_PATCH
from .common import CliError, run_main

logger = logging.getLogger("beats_fairseq.cli.precompute_labels")


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


def task_for(args):
    """The pre-training task with the clip settings of ``args`` (so clips are read and cropped as in training)."""
    from omegaconf import OmegaConf

    from ..tasks.beats_pretraining import BeatsPretrainingConfig, BeatsPretrainingTask

    root = OmegaConf.create({"common": {"seed": 1, "bf16": False, "fp16": False}})
    root.task = OmegaConf.structured(BeatsPretrainingConfig(
        data=args.data, max_sample_size=args.max_sample_size,
        min_sample_size=args.min_sample_size, crop=args.crop, bad_audio="skip",
    ))
    return BeatsPretrainingTask(root.task)


def _items(batch):
    return batch


def label_dataset(tokenizer, dataset, device, batch_size=16, num_workers=0, progress=True, desc="labels"):
    """Labels of every kept clip of ``dataset`` (each clip alone): (list per manifest entry, unreadable entries)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..data.label_store import label_dtype, num_patches

    dtype = label_dtype(tokenizer.codebook_size)  # kept compact: AS-2M has about 1e9 patches
    per_entry = [np.zeros(0, dtype=dtype) for _ in range(len(dataset.manifest))]
    labelled = set()
    order = np.argsort(dataset.sizes, kind="stable")  # similar lengths together
    loader = DataLoader(torch.utils.data.Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_items)
    patch = int(tokenizer.cfg.input_patch_size)
    with tqdm(total=len(dataset), desc=desc, unit="clip", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for items in loader:
            groups = defaultdict(list)
            for item in items:
                if item is None:
                    continue
                groups[item["source"].numel()].append(item)
            for length, group in groups.items():
                source = torch.stack([g["source"].float() for g in group]).to(device)
                codes = tokenizer.extract_labels(source).cpu().numpy()
                expected = num_patches(length, patch)
                if codes.shape[1] != expected:
                    raise RuntimeError(f"tokenizer gave {codes.shape[1]} patches for {length} samples, "
                                       f"expected {expected}")
                for g, row in zip(group, codes):
                    entry = int(dataset.kept_indices[g["id"]])
                    per_entry[entry] = row.astype(dtype)
                    labelled.add(entry)
            bar.update(len(items))
    unreadable = sorted(int(j) for j in dataset.kept_indices if int(j) not in labelled)
    return per_entry, unreadable


def up_to_date(out, split, dataset, identity, min_sample_size) -> bool:
    from ..data.label_store import LabelStore, LabelStoreMismatch

    try:
        store = LabelStore(out, split)
        store.check_dataset(dataset)
        store.check_tokenizer(identity)
    except (FileNotFoundError, LabelStoreMismatch, KeyError, ValueError):
        return False
    return int(store.meta.get("min_sample_size", -1)) == int(min_sample_size)


def run(args) -> int:
    if args.batch_size <= 0:
        raise CliError(f"--batch-size must be > 0, got {args.batch_size}")
    from ..data.label_store import command_line, crop_identity, manifest_identity, tokenizer_identity, write_label_store
    from ..loading import load_frozen_tokenizer
    from ..tokenizers import NotATokenizerError
    from .inference import resolve_device

    device = resolve_device(args.device)
    if not os.path.isfile(args.tokenizer):
        raise CliError(f"tokenizer checkpoint {args.tokenizer!r} does not exist")
    try:
        tokenizer = load_frozen_tokenizer(args.tokenizer, device=str(device))
    except (NotATokenizerError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
    identity = tokenizer_identity(tokenizer, args.tokenizer)
    task = task_for(args)
    for split in args.splits:
        dataset = task.build_audio_dataset(split, shuffle=False)
        if not args.force and up_to_date(args.out, split, dataset, identity, args.min_sample_size):
            logger.info("%s: labels in %s are up to date (same manifest, crop and tokenizer); skipped", split, args.out)
            continue
        start = time.time()
        per_entry, unreadable = label_dataset(tokenizer, dataset, device, args.batch_size, args.num_workers,
                                              not args.no_progress, desc=f"{split} labels")
        if unreadable:
            logger.warning("%s: %d clips could not be read and have no labels (skipped in training too)",
                           split, len(unreadable))
        meta = {
            "manifest": manifest_identity(task.manifest_path(split)),
            "crop": crop_identity(dataset),
            "sample_rate": dataset.sample_rate,
            "min_sample_size": dataset.min_sample_size,
            "tokenizer": identity,
            "unreadable": unreadable,
            "command": command_line(getattr(args, "argv", None)),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        meta = write_label_store(args.out, split, per_entry, meta)
        logger.info("%s: %d clips, %d patch labels (codebook %d) written to %s in %.1f s", split,
                    meta["num_labelled"], meta["total_patches"], identity["codebook_size"], args.out,
                    time.time() - start)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]

    def run_with_argv(args):
        args.argv = argv  # recorded in the sidecar as the command that rewrites the labels
        return run(args)

    return run_main("beats-precompute-labels", build_parser(), run_with_argv, argv)


if __name__ == "__main__":
    sys.exit(main())
