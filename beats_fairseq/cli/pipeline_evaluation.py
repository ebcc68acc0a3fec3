"""Evaluation rows of ``beats-pipeline``: a fine-tuned classifier's test score, the raw-fbank
baseline, and the ``evaluation`` block of ``RUN/summary.json`` with its table.

* :func:`score_classifier`: a fine-tuned ``beats_classifier`` checkpoint (the best-validation
  one) scored on a labelled split: accuracy (single-label) or mAP (multi-label).
* :func:`fbank_baseline`: no pre-training at all. Every clip's fbank, computed by the
  project's one front end (:func:`beats_fairseq.modules.fbank.compute_fbank`: Kaldi recipe,
  Povey window, as the official BEATs code), is pooled into the mean and the standard deviation
  of every mel bin over the clip's frames (256 values); a logistic regression
  (:func:`beats_fairseq.probe.fit_and_score`, standardised features, C = 1) is fit on the
  training split and scored on the held-out split. The normalisation of the fbank does not
  matter (the features are standardised); the window does, a little.
* :func:`evaluation_block`: ``{"metric", "split", "rows": {name: {"mean", "std", "runs"}}}``.
"""

import argparse
import statistics
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..probe import class_count, fit_and_score, read_split_labels

FBANK_DESCRIPTION = ("logistic regression on mean+std pooled 128-bin fbank (this project's Kaldi front end, "
                     "Povey window), standardised, C = 1")


def _reader_args(batch_size: int) -> argparse.Namespace:
    return argparse.Namespace(batch_size=batch_size, num_workers=0, max_seconds=None, no_progress=True,
                              skip_bad=False)


def _score(scores: np.ndarray, labels: List[List[int]], num_classes: int, multilabel: bool) -> Tuple[str, float]:
    from ..metrics import accuracy, mean_average_precision

    if multilabel:
        targets = np.zeros((len(labels), num_classes), dtype=np.float32)
        for row, ids in enumerate(labels):
            targets[row, ids] = 1.0
        return "mAP", float(mean_average_precision(scores, targets))
    return "accuracy", float(accuracy(scores, np.asarray([ids[0] for ids in labels])))


@torch.no_grad()
def score_classifier(checkpoint: str, data: str, split: str = "test", label_ext: str = "lbl",
                     device="cpu", batch_size: int = 16) -> Tuple[str, float]:
    """(metric, value) of a fine-tuned classifier on ``{data}/{split}.tsv`` + ``{split}.{label_ext}``."""
    from ..loading import load
    from .inference import BatchReader, clips_from_manifest

    model = load(checkpoint, device=str(device))
    manifest, labels = read_split_labels(data, split, label_ext, None)
    num_classes = class_count(data, labels)
    scores = np.zeros((len(labels), num_classes), dtype=np.float32)
    for batch in BatchReader(clips_from_manifest(manifest), _reader_args(batch_size), torch.device(device)):
        probs, _ = model.extract_features(batch.source, batch.padding_mask)
        scores[batch.positions] = probs.float().cpu().numpy()
    return _score(scores, labels, num_classes, label_ext == "mlbl" or any(len(ids) != 1 for ids in labels))


@torch.no_grad()
def fbank_statistics(manifest: str, batch_size: int = 16) -> np.ndarray:
    """``(M, 256)``: per clip, the mean and the std of each of the 128 fbank bins over its frames."""
    from .inference import BatchReader, clips_from_manifest
    from ..modules.fbank import compute_fbank, num_frames

    clips = clips_from_manifest(manifest)
    out = np.zeros((len(clips), 256), dtype=np.float32)
    for batch in BatchReader(clips, _reader_args(batch_size), torch.device("cpu")):
        fbank = compute_fbank(batch.source)
        for row, (position, length) in enumerate(zip(batch.positions, batch.lengths)):
            frames = fbank[row, : num_frames(length)]
            out[position, :128] = frames.mean(0).numpy()
            out[position, 128:] = frames.std(0, unbiased=False).numpy()
    return out


def fbank_baseline(data: str, train_split: str = "train", eval_split: str = "test",
                   label_ext: str = "lbl") -> Tuple[str, float]:
    """(metric, value) of the raw-fbank logistic regression, fit on ``train_split``."""
    train_manifest, train_labels = read_split_labels(data, train_split, label_ext, None)
    eval_manifest, eval_labels = read_split_labels(data, eval_split, label_ext, None)
    num_classes = class_count(data, train_labels, eval_labels)
    multilabel = label_ext == "mlbl" or any(len(ids) != 1 for ids in train_labels + eval_labels)
    return fit_and_score(fbank_statistics(train_manifest), train_labels, fbank_statistics(eval_manifest),
                         eval_labels, num_classes, multilabel, C=1.0, max_iter=3000)


# ---------------------------------------------------------------------------- summary
def evaluation_row(runs: List[float]) -> Dict[str, object]:
    runs = [float(v) for v in runs]
    std = statistics.stdev(runs) if len(runs) > 1 else 0.0
    return {"mean": float(np.mean(runs)), "std": float(std), "runs": runs}


def evaluation_block(metric: str, split: str, runs: Dict[str, List[float]], how: Optional[str] = None) -> dict:
    """The ``evaluation`` block of ``summary.json``; ``runs``: ``{row name: [value per run]}``, in order."""
    block = {"metric": metric, "split": split, "rows": {k: evaluation_row(v) for k, v in runs.items() if v}}
    if how:
        block["how"] = how
    return block


def evaluation_table(block: dict) -> str:
    rows = block["rows"]
    base = rows.get("fbank", {}).get("mean")
    lines = [f"| encoder | {block['metric']} on {block['split']} (mean ± std) | vs fbank | runs |", "|---|---|---|---|"]
    for name, row in rows.items():
        delta = "" if base is None or name == "fbank" else f"{row['mean'] - base:+.3f}"
        runs = ", ".join(f"{v:.3f}" for v in row["runs"])
        lines.append(f"| {name} | {row['mean']:.3f} ± {row['std']:.3f} | {delta} | {runs} |")
    return "\n".join(lines)
