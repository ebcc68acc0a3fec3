"""``beats-manifest`` subcommands for public corpora: AudioSet, ESC-50, Speech Commands v2."""

import csv
import logging
import os
import re
from typing import Dict, List

from .common import CliError
from .manifest_writer import Item, ManifestWriter, find_audio

logger = logging.getLogger("beats_fairseq.cli.manifest")

YTID_LENGTH = 11  # YouTube ids are 11 characters of [A-Za-z0-9_-]
_SEGMENT_SUFFIX = re.compile(r"^(.+?)(?:_-?\d+(?:\.\d+)?){1,2}$")  # "<id>_30.000_40.000" / "<id>_30000"


# ---------------------------------------------------------------------------- AudioSet
def read_segments(path: str):
    """``[(ytid, start, end, [mids]), ...]`` of an AudioSet segment csv (``#`` lines are comments)."""
    if not os.path.isfile(path):
        raise CliError(f"segment csv {path} not found")
    segments = []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, skipinitialspace=True), start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 4:
                raise CliError(f"{path}, line {lineno}: expected 'YTID, start_seconds, end_seconds, \"mid,mid\"', "
                               f"found {row}")
            mids = [m.strip() for m in row[3].split(",") if m.strip()]
            segments.append((row[0].strip(), row[1].strip(), row[2].strip(), mids, lineno))
    return segments


def index_audioset_files(audio_dir: str) -> Dict[str, List[str]]:
    """Map YouTube id -> files. Accepted names: ``<id>``, ``Y<id>``, either followed by
    ``_<start>[_<end>]``, or any name whose first 11 characters (after an optional ``Y``) are the id."""
    exact: Dict[str, List[str]] = {}
    prefix: Dict[str, List[str]] = {}
    for path in find_audio(audio_dir):
        stem = os.path.splitext(os.path.basename(path))[0]
        match = _SEGMENT_SUFFIX.match(stem)
        bases = {stem} | ({match.group(1)} if match else set())
        keys = bases | {b[1:] for b in bases if b.startswith("Y")}
        for key in keys:
            exact.setdefault(key, []).append(path)
        for base in (stem, stem[1:] if stem.startswith("Y") else None):
            if base and len(base) >= YTID_LENGTH:
                prefix.setdefault(base[:YTID_LENGTH], []).append(path)
    return {"exact": exact, "prefix": prefix}


def find_segment_file(index, ytid: str, start: str):
    candidates = index["exact"].get(ytid) or index["prefix"].get(ytid) or []
    if len(candidates) > 1:  # several segments of one video: prefer the one named with this start time
        start_tag = start.split(".")[0]
        named = [p for p in candidates if f"_{start_tag}" in os.path.basename(p)]
        candidates = named or candidates
    return candidates[0] if candidates else None


def run_audioset(args) -> int:
    from ..data.manifest import read_class_map

    splits = args.splits or [os.path.splitext(os.path.basename(p))[0] for p in args.segments]
    if len(splits) != len(args.segments):
        raise CliError(f"{len(args.segments)} --segments files but {len(splits)} --splits names")
    rows = read_class_map(args.class_map)
    mid_index = {r["mid"]: r["index"] for r in rows}
    index = index_audioset_files(args.audio_dir)
    writer = ManifestWriter(args, args.audio_dir)
    total = 0
    for segments_path, split in zip(args.segments, splits):
        items, missing = [], []
        for ytid, start, end, mids, lineno in read_segments(segments_path):
            unknown = [m for m in mids if m not in mid_index]
            if unknown or not mids:
                raise CliError(f"{segments_path}, line {lineno}: labels {unknown or mids} are not in {args.class_map}")
            path = find_segment_file(index, ytid, start)
            if path is None:
                missing.append(f"{ytid}\t{start}\t{end}")
                continue
            items.append(Item(os.path.abspath(path), [mid_index[m] for m in mids]))
        total += writer.write_split(split, items, multilabel=True)
        if missing:
            with open(os.path.join(writer.out, f"{split}_missing.txt"), "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in missing))
            logger.warning("%s: %d of %d segments have no audio file in %s (listed in %s_missing.txt)",
                           split, len(missing), len(missing) + len(items), args.audio_dir, split)
    writer.write_class_map([r["display_name"] for r in rows], [r["mid"] for r in rows])
    writer.finish()
    print(f"{len(rows)} classes, {total} clips in {len(splits)} splits -> {writer.out}")
    return 0


# ---------------------------------------------------------------------------- ESC-50
def read_esc50_meta(root: str):
    path = os.path.join(root, "meta", "esc50.csv")
    if not os.path.isfile(path):
        raise CliError(f"{path} not found: pass the ESC-50 root folder (the one with meta/ and audio/)")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"filename", "fold", "target", "category"} - set(reader.fieldnames or [])
        if missing:
            raise CliError(f"{path}: missing columns {sorted(missing)}")
        try:
            return [(r["filename"], int(r["fold"]), int(r["target"]), r["category"]) for r in reader]
        except ValueError as exc:
            raise CliError(f"{path}, line {reader.line_num}: {exc}") from None


def run_esc50(args) -> int:
    meta = read_esc50_meta(args.root)
    categories: Dict[int, str] = {}
    for _, _, target, category in meta:
        if categories.setdefault(target, category) != category:
            raise CliError(f"ESC-50 target {target} has two categories: {categories[target]!r} and {category!r}")
    if sorted(categories) != list(range(len(categories))):
        raise CliError(f"ESC-50 targets must be 0..K-1, found {sorted(categories)}")
    names = [categories[t] for t in range(len(categories))]
    mids = [f"esc50_{t:02d}" for t in range(len(categories))]
    audio_dir = os.path.join(args.root, "audio")
    items = [(fold, Item(os.path.abspath(os.path.join(audio_dir, name)), [target])) for name, fold, target, _ in meta]
    folds = sorted({fold for fold, _ in items})
    chosen = args.folds or folds
    unknown = sorted(set(chosen) - set(folds))
    if unknown:
        raise CliError(f"--folds {unknown} not in {os.path.join(args.root, 'meta', 'esc50.csv')} (folds: {folds})")
    writer = ManifestWriter(args, audio_dir)
    writer.write_split("all", [it for _, it in items])
    writer.write_class_map(names, mids)
    for fold in chosen:
        folder = f"fold{fold}"
        writer.write_split("train", [it for f, it in items if f != fold], folder=folder)
        writer.write_split("valid", [it for f, it in items if f == fold], folder=folder)
        writer.write_class_map(names, mids, folder=folder)
    writer.finish()
    print(f"{len(names)} classes, {len(items) - len(writer.skipped)} clips, folds {chosen} -> {writer.out}")
    return 0


# ---------------------------------------------------------------------------- Speech Commands v2
def read_list(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise CliError(f"{path} not found: pass the Speech Commands v2 root folder")
    with open(path, encoding="utf-8") as f:
        return [os.path.normpath(line.strip()) for line in f if line.strip()]


def run_spcv2(args) -> int:
    root = args.root
    valid = set(read_list(os.path.join(root, "validation_list.txt")))
    test = set(read_list(os.path.join(root, "testing_list.txt")))
    words = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                   and not d.startswith((".", "_")))
    if not words:
        raise CliError(f"no word folders in {root}")
    parts = {"train": [], "valid": [], "test": []}
    for index, word in enumerate(words):
        for path in find_audio(os.path.join(root, word)):
            rel = os.path.relpath(path, root)
            split = "valid" if rel in valid else "test" if rel in test else "train"
            parts[split].append(Item(os.path.abspath(path), [index]))
    listed = {os.path.relpath(it.path, os.path.abspath(root)) for split in ("valid", "test") for it in parts[split]}
    absent = sorted((valid | test) - listed)
    if absent:
        message = f"{len(absent)} files of the validation/testing lists are not in {root} (first: {absent[0]})"
        if not args.skip_bad:
            raise CliError(message + "; pass --skip-bad to build the manifests without them")
        logger.warning(message)
    writer = ManifestWriter(args, root)
    for split, items in parts.items():
        writer.write_split(split, items)
    writer.write_class_map(words, words)
    writer.finish()
    counts = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    print(f"{len(words)} classes ({counts}) -> {writer.out}")
    return 0


# ---------------------------------------------------------------------------- parsers
def add_parsers(sub, add_common) -> None:
    audioset = sub.add_parser(
        "audioset", help="AudioSet segment csvs + class_labels_indices.csv (multi-label .mlbl)",
        description="One split per segment csv. Audio files are found under --audio-dir (recursively) by YouTube id: "
                    "<id>.wav, Y<id>.flac, Y<id>_30.000_40.000.wav, ... Segments without a file are listed in "
                    "OUT/<split>_missing.txt.")
    audioset.add_argument("--segments", nargs="+", required=True,
                          help="segment csvs (balanced_train_segments.csv, eval_segments.csv, ...)")
    audioset.add_argument("--splits", nargs="+",
                          help="split name per segment csv, in order (default: the csv file names without .csv)")
    audioset.add_argument("--class-map", required=True, help="class_labels_indices.csv (index,mid,display_name)")
    audioset.add_argument("--audio-dir", required=True, help="folder holding the downloaded clips (searched recursively)")
    add_common(audioset)
    audioset.set_defaults(func=run_audioset)

    esc50 = sub.add_parser(
        "esc50", help="ESC-50 (meta/esc50.csv, 5 folds)",
        description="Writes all.tsv/.lbl and, per fold k, foldk/train.tsv (the other folds) and foldk/valid.tsv "
                    "(fold k) with .lbl files and labels.csv: use task.data=OUT/foldk for 5-fold cross-validation. "
                    "ESC-50 audio is 44.1 kHz and is resampled to 16 kHz (on the fly or with --resample-dir).")
    esc50.add_argument("root", help="ESC-50 root folder (with meta/esc50.csv and audio/)")
    esc50.add_argument("--folds", type=int, nargs="+", help="held-out folds to write (default: all folds in the csv)")
    add_common(esc50)
    esc50.set_defaults(func=run_esc50)

    spcv2 = sub.add_parser(
        "spcv2", help="Speech Commands v2 (35 words; validation_list.txt / testing_list.txt)",
        description="Class = word folder (folders starting with '_' such as _background_noise_ are left out); "
                    "valid/test membership from validation_list.txt / testing_list.txt, everything else is train.")
    spcv2.add_argument("root", help="Speech Commands v2 root folder (word folders and the two list files)")
    add_common(spcv2)
    spcv2.set_defaults(func=run_spcv2)
