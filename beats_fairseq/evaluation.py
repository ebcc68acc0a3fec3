"""Evaluation on labelled splits: what is multi-label, which metric, and the loop that scores a classifier.

* :class:`LabelledSplit`: a manifest, its labels (one list of class ids per clip), the class
  count and whether the data is multi-label, decided once by :func:`read_split` (one split)
  or :func:`read_splits` (the splits of a data folder evaluated together: one class count,
  one decision for all of them).
* The rule, :func:`is_multilabel`: a split is multi-label when its label files are ``.mlbl``
  or some clip has several class ids.
* The metric, :func:`score`: mAP over the classes with a positive clip for multi-label data,
  accuracy of the top class for single-label data (``beats_fairseq.metrics``), as a
  :class:`Score` ``(metric, value)``.
* The loop, :func:`classifier_scores`: a classifier's class probabilities for every clip of a
  :class:`~beats_fairseq.data.clips.ClipBatches`; :func:`score_classifier` scores a
  checkpoint on a split with it.

``beats-evaluate``, ``beats-probe`` (through ``beats_fairseq.probe``) and ``beats-pipeline``
use these and nothing else.
"""

import os
from dataclasses import dataclass, replace
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

MULTILABEL_EXT = "mlbl"
METRICS = ("mAP", "accuracy")


class Score(NamedTuple):
    metric: str  # "mAP" or "accuracy"
    value: float


def several_ids(*label_lists: Sequence[Sequence[int]]) -> bool:
    """Some clip has several class ids."""
    return any(len(ids) > 1 for labels in label_lists for ids in labels)


def is_multilabel(label_ext: str, *label_lists: Sequence[Sequence[int]]) -> bool:
    """The one rule: ``.mlbl`` label files, or a clip with several class ids."""
    return label_ext == MULTILABEL_EXT or several_ids(*label_lists)


@dataclass
class LabelledSplit:
    name: str
    manifest: str  # path of the .tsv manifest
    labels: List[List[int]]  # class ids of every manifest entry
    num_classes: int
    multilabel: bool

    @property
    def metric(self) -> str:
        return "mAP" if self.multilabel else "accuracy"

    def __len__(self) -> int:
        return len(self.labels)

    def targets(self) -> np.ndarray:
        """``(clips, classes)`` float32 multi-hot matrix."""
        out = np.zeros((len(self.labels), self.num_classes), dtype=np.float32)
        for row, ids in enumerate(self.labels):
            out[row, ids] = 1.0
        return out

    def classes(self) -> np.ndarray:
        """``(clips,)`` class id of every clip (single-label data)."""
        if several_ids(self.labels):
            raise ValueError(f"split {self.name!r} has clips with several class ids: it has no single class per clip")
        return np.asarray([ids[0] for ids in self.labels], dtype=np.int64)

    def subset(self, positions: Sequence[int]) -> "LabelledSplit":
        """The same split restricted to the clips at ``positions`` (e.g. the readable ones)."""
        return replace(self, labels=[self.labels[p] for p in positions])


def _entries(manifest: str) -> int:
    from .data.manifest import read_manifest

    return len(read_manifest(manifest))


def read_split(manifest: str, label_path: str, num_classes: Optional[int] = None,
               multilabel: Optional[bool] = None, name: Optional[str] = None) -> LabelledSplit:
    """One split from its files; ``num_classes``: e.g. the model's outputs (default: 1 + the largest id)."""
    from .data.manifest import read_label_file

    labels = read_label_file(label_path, _entries(manifest), num_classes)
    ext = os.path.splitext(label_path)[1].lstrip(".")
    if multilabel is None:
        multilabel = is_multilabel(ext, labels)
    count = num_classes if num_classes is not None else 1 + max(c for ids in labels for c in ids)
    return LabelledSplit(name or os.path.splitext(os.path.basename(manifest))[0], manifest, labels, count, multilabel)


def read_splits(data: str, names: Sequence[str], label_ext: str = "lbl",
                multilabel: Optional[bool] = None) -> List[LabelledSplit]:
    """``{data}/{name}.tsv`` with ``{name}.{label_ext}`` for every name, evaluated together: the class
    count is that of ``{data}/labels.csv`` (else 1 + the largest id of any split) and multi-label
    is decided over all of them."""
    from .data.manifest import read_class_map, read_label_file

    class_map = os.path.join(data, "labels.csv")
    num_classes = len(read_class_map(class_map)) if os.path.isfile(class_map) else None
    read = []
    for name in names:
        manifest = os.path.join(data, f"{name}.tsv")
        read.append((name, manifest, read_label_file(os.path.join(data, f"{name}.{label_ext}"),
                                                     _entries(manifest), num_classes)))
    lists = [labels for _, _, labels in read]
    if num_classes is None:
        num_classes = 1 + max(c for labels in lists for ids in labels for c in ids)
    if multilabel is None:
        multilabel = is_multilabel(label_ext, *lists)
    return [LabelledSplit(name, manifest, labels, num_classes, multilabel) for name, manifest, labels in read]


# ---------------------------------------------------------------------------- metrics
def score(scores, split: LabelledSplit, metric: Optional[str] = None) -> Score:
    """The split's metric (or ``metric``) of ``(clips, classes)`` scores, rows in the split's order."""
    from .metrics import accuracy, mean_average_precision

    metric = metric or split.metric
    if metric == "mAP":
        return Score("mAP", mean_average_precision(scores, split.targets()))
    if metric == "accuracy":  # the top class is (one of) the clip's
        return Score("accuracy", accuracy(scores, split.targets()))
    raise ValueError(f"metric {metric!r}: choose one of {METRICS}")


def per_class(scores, split: LabelledSplit, metric: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(AP or accuracy of every class, nan where it has no clip; clips of every class)."""
    from .metrics import accuracy_per_class, average_precision_per_class

    if (metric or split.metric) == "mAP":
        targets = split.targets()
        return average_precision_per_class(scores, targets), targets.sum(axis=0).astype(np.int64)
    return accuracy_per_class(scores, split.classes())


# ---------------------------------------------------------------------------- classifiers
def classifier_scores(model, batches) -> Tuple[List[int], np.ndarray]:
    """(positions of the scored clips, ``(clips, classes)`` probabilities) of a classifier over the
    batches of a :class:`~beats_fairseq.data.clips.ClipBatches` (unreadable clips it skips are left out)."""
    import torch

    positions, blocks = [], []
    with torch.inference_mode():
        for batch in batches:
            probs, _ = model.extract_features(batch.source, batch.padding_mask)
            blocks.append(probs.float().cpu().numpy())
            positions.extend(batch.positions)
    width = blocks[0].shape[1] if blocks else 0
    return positions, (np.concatenate(blocks) if blocks else np.zeros((0, width), dtype=np.float32))


def score_classifier(checkpoint: str, split: LabelledSplit, device="cpu", batch_size: int = 16,
                     num_workers: int = 0) -> Score:
    """A fine-tuned classifier checkpoint scored on ``split`` (its outputs are the split's class ids)."""
    import torch

    from .data.clips import ClipBatches, clips_from_manifest
    from .loading import load

    model = load(checkpoint, device=str(device))
    outputs = int(model.cfg.num_classes)
    if outputs != split.num_classes:
        raise ValueError(f"{checkpoint} has {outputs} outputs but split {split.name} has {split.num_classes} classes")
    batches = ClipBatches(clips_from_manifest(split.manifest), torch.device(device), batch_size, num_workers)
    positions, scores = classifier_scores(model, batches)
    return score(scores, split.subset(positions))


def class_columns(mids: Sequence[str], class_map: str):
    """(model output column of every class-map row, their MIDs, their display names), for a model whose
    outputs are the MIDs ``mids`` (an official ``label_dict``: not in the class map's order)."""
    from .data.manifest import read_class_map

    rows = read_class_map(class_map)
    column = {m: i for i, m in enumerate(mids)}
    missing = [r["mid"] for r in rows if r["mid"] not in column]
    if missing:
        raise ValueError(f"{len(missing)} classes of {class_map} are not outputs of the model "
                         f"(first: {missing[:5]}): the label_dict and the class map do not match")
    return np.asarray([column[r["mid"]] for r in rows]), [r["mid"] for r in rows], [r["display_name"] for r in rows]
