"""The metrics of a training stage, read from the TensorBoard event files its run wrote.

With ``common.tensorboard_logdir`` (the pipeline sets ``RUN_DIR/<stage>/tensorboard``) fairseq
writes one folder per tag: ``train_inner`` (every ``common.log_interval`` updates), ``train``
(end of an epoch) and one per validation subset (``valid``), each metric a scalar at step
``num_updates``. A resumed run adds an event file and logs some updates again: the last value
of a step counts.
"""

import struct
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

Series = Tuple[List[float], List[float]]  # (updates, values)
Curves = Dict[str, Dict[str, Series]]  # tag -> metric -> series
TRAIN_TAGS = ("train_inner", "train")


def read_scalars(path: Path) -> Iterator[Tuple[int, str, float]]:
    """``(step, tag, value)`` of every scalar of one event file (TFRecord of ``Event`` protos); a
    record cut short (a run still writing, or killed) ends the file."""
    from tensorboardX.proto.event_pb2 import Event

    with open(path, "rb") as f:
        while True:
            header = f.read(12)  # uint64 length, uint32 crc of the length
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:  # the record and the crc of its data
                return
            event = Event.FromString(data)
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    yield event.step, value.tag, value.simple_value


def read_curves(tensorboard_dir: Path) -> Curves:
    """``{tag: {metric: (updates, values)}}`` of a stage's TensorBoard folder (empty when it has none)."""
    curves: Curves = {}
    if not tensorboard_dir.is_dir():
        return curves
    for folder in sorted(p for p in tensorboard_dir.iterdir() if p.is_dir()):
        points: Dict[str, Dict[int, float]] = {}
        for path in sorted(folder.glob("events.out.tfevents.*")):  # named by creation time: a resume comes later
            for step, metric, value in read_scalars(path):
                points.setdefault(metric, {})[step] = value
        if points:
            curves[folder.name] = {k: (sorted(v), [v[x] for x in sorted(v)]) for k, v in points.items()}
    return curves


def validation_tag(curves: Curves) -> str:
    """The validation subset's tag (``valid`` unless the recipe validates on another subset)."""
    tags = [t for t in curves if t not in TRAIN_TAGS]
    return "valid" if "valid" in tags or not tags else tags[0]


def last_metrics(curves: Curves) -> Dict[str, Dict[str, float]]:
    """The last logged value of every metric, as ``{"train_inner" | "train" | "valid": {metric: value}}``
    with ``num_updates`` (what ``state.json`` and ``summary.json`` keep of a training stage)."""
    out = {}
    for tag, name in (("train_inner", "train_inner"), ("train", "train"), (validation_tag(curves), "valid")):
        series = curves.get(tag)
        if series:
            out[name] = {metric: values[-1] for metric, (_, values) in series.items()}
            out[name]["num_updates"] = float(max(steps[-1] for steps, _ in series.values()))
    return out
