"""Shared pieces of the command-line tools that run a model over audio: device, model loading,
class names, batched clips. Imports torch: the tools import it in ``run(args)``, after parsing.

The clips and their batches are ``beats_fairseq/data/clips.py``; :class:`BatchReader` sets them
from the tools' arguments.
"""

import os
from typing import List, Optional

import torch

from ..data.clips import SAMPLE_RATE, Batch, Clip, ClipBatches, clips_from_files, clips_from_manifest  # noqa: F401
from ..data.label_store import num_patches  # noqa: F401  (re-exported for the tools)
from ..data.manifest import read_class_map
from ..loading import load, model_kind  # noqa: F401  (model_kind re-exported for the tools)
from .common import CliError, check_positive


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
