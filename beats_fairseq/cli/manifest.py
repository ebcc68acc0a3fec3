"""beats-manifest: build fairseq ``.tsv`` manifests, label files and a class map.

Subcommands (formats and layouts in manifests/README.md):

* ``folder``   a folder of audio with one sub-folder per class;
* ``audioset`` AudioSet segment csvs + ``class_labels_indices.csv`` (``.mlbl`` labels);
* ``esc50``    ESC-50 (``meta/esc50.csv``), one train/valid pair per fold;
* ``spcv2``    Speech Commands v2 (``validation_list.txt`` / ``testing_list.txt``), 35 words.

Audio at other sample rates or with several channels is used as is and resampled to 16 kHz
/ averaged to mono when read (``num_samples`` is the length after resampling), or, with
``--resample-dir``, converted once to 16 kHz mono 16-bit wav copies that the manifests
point to.
"""

import argparse
import logging
import os
import sys
from typing import Dict, List

from . import manifest_sources
from .common import CliError, run_main
from .manifest_writer import AUDIO_EXTENSIONS, Item, ManifestWriter, find_audio

logger = logging.getLogger("beats_fairseq.cli.manifest")


# ---------------------------------------------------------------------------- folder of classes
def class_folders(audio_dir: str):
    if not os.path.isdir(audio_dir):
        raise CliError(f"{audio_dir} is not a folder")
    names = sorted(d for d in os.listdir(audio_dir) if not d.startswith(".") and os.path.isdir(os.path.join(audio_dir, d)))
    loose = [f for f in os.listdir(audio_dir) if f.lower().endswith(AUDIO_EXTENSIONS)]
    if loose:
        logger.warning("%d audio files directly in %s have no class folder and are ignored", len(loose), audio_dir)
    return names


def split_items(items: List[Item], fractions, seed: int):
    """Per class, a seeded shuffle then the first ``round(f * n)`` clips to each extra split."""
    import numpy as np

    rng = np.random.default_rng(seed)
    splits = [[] for _ in range(len(fractions) + 1)]
    by_class: Dict[int, List[Item]] = {}
    for item in items:
        by_class.setdefault(item.labels[0], []).append(item)
    for cls in sorted(by_class):
        group = [by_class[cls][i] for i in rng.permutation(len(by_class[cls]))]
        start = 0
        for k, fraction in enumerate(fractions):
            count = int(round(fraction * len(group)))
            splits[k + 1].extend(group[start:start + count])
            start += count
        splits[0].extend(group[start:])
    return [sorted(s, key=lambda it: it.path) for s in splits]


def run_folder(args) -> int:
    from ..data.manifest import read_class_map

    names = class_folders(args.audio_dir)
    if args.classes_from:
        rows = read_class_map(args.classes_from)
        lookup = {r["mid"]: r["index"] for r in rows}
        lookup.update({r["display_name"]: r["index"] for r in rows})
        unknown = [n for n in names if n not in lookup]
        if unknown:
            raise CliError(f"class folders {unknown} are not in {args.classes_from} (matched by mid or display_name)")
        index, mids, display = {n: lookup[n] for n in names}, [r["mid"] for r in rows], [r["display_name"] for r in rows]
    else:
        index, mids, display = {n: i for i, n in enumerate(names)}, names, names
    items = [Item(p, [index[n]]) for n in names for p in find_audio(os.path.join(args.audio_dir, n))]
    if not items:
        raise CliError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class sub-folders of {args.audio_dir}")
    if args.valid_fraction < 0 or args.test_fraction < 0 or args.valid_fraction + args.test_fraction >= 1:
        raise CliError("--valid-fraction and --test-fraction must be >= 0 and sum to less than 1")
    fractions = {"valid": args.valid_fraction, "test": args.test_fraction}
    if fractions.get(args.split_name, 0) > 0:
        raise CliError(f"--split-name {args.split_name} clashes with the held-out split of the same name")
    writer = ManifestWriter(args, args.audio_dir)
    splits = split_items(items, list(fractions.values()), args.seed)
    writer.write_split(args.split_name, splits[0])
    for (name, fraction), part in zip(fractions.items(), splits[1:]):
        if fraction > 0:
            writer.write_split(name, part)
    writer.write_class_map(display, mids)
    writer.finish()
    print(f"{len(names)} classes, {len(items) - len(writer.skipped)} clips -> {writer.out}")
    return 0


# ---------------------------------------------------------------------------- parser
def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder for the .tsv, label files and labels.csv")
    parser.add_argument("--resample-dir",
                        help="write 16 kHz mono 16-bit wav copies of every file here and point the manifests at "
                             "them (default: use the originals; other rates/channels are converted when read)")
    parser.add_argument("--relative-root", action="store_true",
                        help="write the manifest root line relative to the manifest's folder (portable data "
                             "folders); default: absolute path")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out files soundfile cannot open (listed in OUT/skipped.tsv) instead of stopping")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-manifest",
        description="Build fairseq .tsv manifests (root line, then relpath<TAB>num_samples at 16 kHz), aligned label "
                    "files (.lbl single-label, .mlbl multi-label: comma-separated class ids) and a class map "
                    "labels.csv (index,mid,display_name). See manifests/README.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{folder,audioset,esc50,spcv2}")
    folder = sub.add_parser("folder", help="a folder with one sub-folder of audio per class",
                            description="Class = first-level sub-folder of AUDIO_DIR (files found recursively).")
    folder.add_argument("audio_dir", help="folder whose sub-folders are the classes")
    folder.add_argument("--split-name", default="train", help="name of the main split (default: train)")
    folder.add_argument("--valid-fraction", type=float, default=0.0,
                        help="share of every class held out as valid.tsv (default: 0, no valid split)")
    folder.add_argument("--test-fraction", type=float, default=0.0,
                        help="share of every class held out as test.tsv (default: 0, no test split)")
    folder.add_argument("--seed", type=int, default=0, help="seed of the per-class shuffle for the splits (default: 0)")
    folder.add_argument("--classes-from",
                        help="existing labels.csv to take class indices from (folders matched by mid or display_name), "
                             "e.g. to build a test split with the training split's classes")
    add_common(folder)
    folder.set_defaults(func=run_folder)
    manifest_sources.add_parsers(sub, add_common)
    return parser


def main(argv=None) -> int:
    return run_main("beats-manifest", build_parser(), lambda args: args.func(args), argv)


if __name__ == "__main__":
    sys.exit(main())
