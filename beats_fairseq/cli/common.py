"""Shared pieces of the command-line tools: model loading, batched audio input, errors.

The clips and their batches are ``beats_fairseq/data/clips.py``; :class:`BatchReader` sets them
from the tools' arguments.
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

import torch

from ..data.audio import AudioReadError
from ..data.clips import SAMPLE_RATE, Batch, Clip, ClipBatches, clips_from_files, clips_from_manifest  # noqa: F401
from ..data.label_store import num_patches  # noqa: F401  (re-exported for the tools)
from ..data.manifest import ManifestError, read_class_map
from ..loading import load, model_kind

logger = logging.getLogger("beats_fairseq.cli")


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
    -> one line on stderr and status 1; Ctrl-C -> "interrupted" and status 130."""
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
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
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
    """``beats_fairseq.load`` with user-facing errors."""
    if not os.path.isfile(path):
        raise CliError(f"checkpoint {path!r} does not exist")
    try:
        return load(path, device=str(device))
    except (RuntimeError, ValueError, KeyError, AssertionError) as exc:
        raise CliError(f"cannot load checkpoint {path!r}: {exc}") from exc


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
class BatchReader(ClipBatches):
    """:class:`~beats_fairseq.data.clips.ClipBatches` set from the tools' arguments (``--batch-size``,
    ``--num-workers``, ``--max-seconds``, ``--skip-bad``, ``--no-progress``); errors are :class:`CliError`."""

    def __init__(self, clips: List[Clip], args, device, desc: str = "clips"):
        check_positive(args, "batch_size", "max_seconds")
        if args.num_workers < 0:
            raise CliError(f"--num-workers must be >= 0, got {args.num_workers}")
        max_samples = None if args.max_seconds is None else max(1, int(args.max_seconds * SAMPLE_RATE))
        super().__init__(clips, device, batch_size=args.batch_size, num_workers=args.num_workers,
                         max_samples=max_samples, skip_bad=getattr(args, "skip_bad", False),
                         progress=not args.no_progress, desc=desc)

    def unreadable(self, message: str):
        raise CliError(f"{message} (or pass --skip-bad to skip unreadable files)")
