"""Shared pieces of the command-line tools: model loading, batched audio input, errors.

Clips are read with :func:`beats_fairseq.data.read_audio` (mono, 16 kHz: other rates are
resampled and several channels averaged on the fly), zero-padded to the longest clip of
their batch and passed with a waveform padding mask (``True`` = padding); the models turn
it into the patch-level mask with the official rule. Batches keep the input order.
"""

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..checkpoint import is_official, read_checkpoint
from ..data.audio import MIN_SAMPLES_ONE_PATCH, AudioReadError, read_audio
from ..data.manifest import ManifestError, read_class_map, read_manifest
from ..loading import load, model_kind
from ..modules.fbank import NUM_MEL_BINS, num_frames

logger = logging.getLogger("beats_fairseq.cli")

SAMPLE_RATE = 16000


class CliError(RuntimeError):
    """A user-facing error: the tools print it without a traceback and exit with status 1."""


USER_ERRORS = (CliError, AudioReadError, ManifestError, FileNotFoundError)


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which pytest and others may swap)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def run_main(prog: str, parser: argparse.ArgumentParser, run, argv=None) -> int:
    """Parse ``argv``, call ``run(args)`` with ``prog: LEVEL: message`` logging on stderr
    (root logging is restored afterwards, so in-process calls leave no trace); user errors
    -> one line on stderr and status 1."""
    args = parser.parse_args(argv)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"{prog}: %(levelname)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        return int(run(args) or 0)
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])


def add_inference_args(parser: argparse.ArgumentParser, skip_bad: bool = True) -> None:
    """Options shared by the tools that run a model over audio."""
    group = parser.add_argument_group("inference")
    group.add_argument("--device", default="auto",
                       help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ... (default: auto)")
    group.add_argument("--batch-size", type=int, default=8,
                       help="clips per forward pass; shorter clips are zero-padded to the longest one and masked "
                            "(default: 8)")
    group.add_argument("--num-workers", type=int, default=2,
                       help="DataLoader processes that read and resample audio; 0 reads in the main process "
                            "(default: 2)")
    group.add_argument("--max-seconds", type=float, default=None,
                       help="keep only the first this-many seconds of every clip (default: the whole clip)")
    if skip_bad:
        group.add_argument("--skip-bad", action="store_true",
                           help="skip audio files that cannot be read (or are shorter than 0.175 s) with one "
                                "warning each and a count at the end, instead of stopping at the first one")
    group.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    group.add_argument("--quiet", action="store_true", help="log warnings and errors only")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CliError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def check_positive(args, *names) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be > 0, got {value}")


# ---------------------------------------------------------------------------- models
def load_model(path: str, device) -> torch.nn.Module:
    """``beats_fairseq.load`` with user-facing errors; a classifier converted by ``beats-convert``
    gets the official ``label_dict`` stored at the top level of its fairseq checkpoint back."""
    if not os.path.isfile(path):
        raise CliError(f"checkpoint {path!r} does not exist")
    try:
        model = load(path, device=str(device))
    except (RuntimeError, ValueError, KeyError, AssertionError) as exc:
        raise CliError(f"cannot load checkpoint {path!r}: {exc}") from exc
    if model_kind(model) == "classifier" and getattr(model, "label_dict", None) is None:
        state = read_checkpoint(path)
        if not is_official(state) and state.get("label_dict"):
            model.label_dict = dict(state["label_dict"])
    return model


def class_table(model, class_map: Optional[str] = None):
    """(mids, display names) of a classifier's outputs, in output order.

    Names come from ``--class-map`` (matched by MID when the model has an official
    ``label_dict``, else by index), then ``model.class_names``, then the ``label_dict``
    values, then the output indices.
    """
    k = model.cfg.num_classes
    label_dict = getattr(model, "label_dict", None) or {}
    mids = [str(label_dict.get(i, label_dict.get(str(i), ""))) for i in range(k)]
    names = getattr(model, "class_names", None)
    if class_map:
        rows = read_class_map(class_map)
        if label_dict:
            by_mid = {r["mid"]: r["display_name"] for r in rows}
            return mids, [by_mid.get(m, m) for m in mids]
        if len(rows) != k:
            raise CliError(f"class map {class_map} has {len(rows)} classes but the model has {k} outputs")
        return [r["mid"] for r in rows], [r["display_name"] for r in rows]
    if names:
        if len(names) != k:
            raise CliError(f"the model has {len(names)} class names for {k} outputs")
        return mids, [str(n) for n in names]
    if label_dict:
        return mids, list(mids)
    return mids, [str(i) for i in range(k)]


# ---------------------------------------------------------------------------- clips
@dataclass
class Clip:
    key: str  # how outputs name the clip: the manifest relpath, or the file path as given
    path: str  # path to read
    entry: int  # 0-based position in the manifest / list of files


def clips_from_manifest(path: str) -> List[Clip]:
    manifest = read_manifest(path)
    return [Clip(manifest.relpath(i), manifest.abspath(i), i) for i in range(len(manifest))]


def clips_from_files(paths) -> List[Clip]:
    return [Clip(p, p, i) for i, p in enumerate(paths)]


def num_patches(num_samples: int, patch_size: int) -> int:
    """Patches of a clip of ``num_samples`` processed alone: complete 16-frame rows x 8 bands."""
    return (num_frames(num_samples) // patch_size) * (NUM_MEL_BINS // patch_size)


class ClipDataset(Dataset):
    """``(position, waveform or None, error message or None)`` per clip."""

    def __init__(self, clips: List[Clip], max_samples: Optional[int] = None):
        self.clips, self.max_samples = clips, max_samples

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        clip = self.clips[i]
        try:
            wav = read_audio(clip.path, SAMPLE_RATE)
            if wav.numel() < MIN_SAMPLES_ONE_PATCH:
                raise AudioReadError(clip.path, f"only {wav.numel()} samples at 16 kHz; BEATs needs at least "
                                                f"{MIN_SAMPLES_ONE_PATCH} (0.175 s, one row of 16x16 patches)")
        except AudioReadError as exc:
            return i, None, str(exc)
        if self.max_samples is not None:
            wav = wav[: self.max_samples]
        return i, wav, None


def _collate(items):
    return items


@dataclass
class Batch:
    positions: List[int]  # indices into the clip list
    source: torch.Tensor  # (B, L) float32 on the device
    padding_mask: Optional[torch.Tensor]  # (B, L) bool, True = padding; None when nothing is padded
    lengths: List[int]


class BatchReader:
    """Iterate over batches of clips; ``skipped`` lists ``(clip, message)`` of unreadable ones."""

    def __init__(self, clips: List[Clip], args, device, desc: str = "clips"):
        check_positive(args, "batch_size", "max_seconds")
        if args.num_workers < 0:
            raise CliError(f"--num-workers must be >= 0, got {args.num_workers}")
        self.clips, self.device, self.desc = clips, device, desc
        self.batch_size, self.num_workers = args.batch_size, args.num_workers
        self.skip_bad = getattr(args, "skip_bad", False)
        self.progress = not args.no_progress
        self.max_samples = None if args.max_seconds is None else max(1, int(args.max_seconds * SAMPLE_RATE))
        self.skipped = []

    def __iter__(self):
        loader = DataLoader(
            ClipDataset(self.clips, self.max_samples), batch_size=self.batch_size, shuffle=False,
            num_workers=self.num_workers, collate_fn=_collate,
        )
        with tqdm(total=len(self.clips), desc=self.desc, unit="clip", disable=not self.progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for items in loader:
                good = []
                for i, wav, error in items:
                    if error is None:
                        good.append((i, wav))
                    elif self.skip_bad:
                        logger.warning("skipping: %s", error)
                        self.skipped.append((self.clips[i], error))
                    else:
                        raise CliError(f"{error} (or pass --skip-bad to skip unreadable files)")
                bar.update(len(items))
                if good:
                    yield self._batch(good)

    def _batch(self, good) -> Batch:
        lengths = [w.numel() for _, w in good]
        longest = max(lengths)
        source = torch.zeros(len(good), longest)
        for row, (_, wav) in enumerate(good):
            source[row, : wav.numel()] = wav
        padding_mask = None
        if min(lengths) < longest:
            padding_mask = torch.arange(longest)[None, :] >= torch.tensor(lengths)[:, None]
            padding_mask = padding_mask.to(self.device)
        return Batch([i for i, _ in good], source.to(self.device), padding_mask, lengths)

    def report(self) -> None:
        if self.skipped:
            logger.warning("skipped %d of %d clips that could not be read (listed above)",
                           len(self.skipped), len(self.clips))
