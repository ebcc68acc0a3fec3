"""Linear probe: how good are an encoder's frozen features for a labelled task?

The same procedure for every encoder (each pre-training iteration, and a randomly initialised
encoder of the same architecture as the baseline):

1. every clip of the training and evaluation manifests goes through the frozen encoder alone
   (``extract_features``, last layer; clips zero-padded in batches and masked, as elsewhere);
2. the clip's feature is the mean over its valid (non-padded) patches (``pooling="mean"``), or
   the mean and the standard deviation (``"mean+std"``); the last layer or ``layer`` (0-based);
3. features are standardised (mean/std of the training split) and a logistic regression
   (sklearn, L2, ``C``) is fit on the training split: one multinomial model for single-label
   data, one binary model per class (one-vs-rest) for multi-label data;
4. it is scored on the held-out split: accuracy (single-label) or mAP over the classes with a
   positive clip (multi-label, ``beats_fairseq.metrics``).

Nothing is tuned on the evaluation split. Labels come from ``{split}.{label_ext}`` files
aligned with the manifests (one line of comma-separated class ids per manifest entry), and
the class count from ``labels.csv`` when the data folder has one.

The command ``beats-probe`` (``beats_fairseq/cli/probe.py``) runs it::

    beats-probe --data demo_data --encoder iter1=runs/iter1/checkpoints/checkpoint_last.pt --eval-split test
"""

import copy
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from .constants import POOLINGS
from .metrics import mean_average_precision

logger = logging.getLogger("beats_fairseq.probe")

RANDOM = "random"


@dataclass
class ProbeResult:
    encoder: str
    checkpoint: str
    metric: str
    value: float
    train_clips: int
    eval_clips: int
    dim: int
    seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------- encoders
def load_backbone(path: str, device="cpu"):
    """The frozen backbone (fbank + patches + Transformer) of any checkpoint ``beats_fairseq.load`` reads."""
    from .loading import load

    model = load(path, device=str(device))
    backbone = getattr(model, "backbone", None)
    if backbone is None or getattr(model, "is_tokenizer", False):
        raise ValueError(f"{path!r} holds a {type(model).__name__}, not an encoder with a backbone to probe")
    return backbone.eval()


def random_backbone(like, seed: int = 0, device="cpu"):
    """A randomly initialised backbone with the architecture (and fbank settings) of ``like``."""
    from .modules.backbone import BeatsBackbone

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        backbone = BeatsBackbone(copy.deepcopy(like.cfg))
    finally:
        torch.random.set_rng_state(state)
    return backbone.to(device).eval()


@torch.no_grad()
def clip_features(backbone, manifest_path: str, device="cpu", batch_size: int = 8, num_workers: int = 0,
                  max_seconds: Optional[float] = None, progress: bool = False, desc: str = "features",
                  pooling: str = "mean", layer: Optional[int] = None):
    """``(M, C)`` float32 (``(M, 2C)`` with mean+std): each clip's pooled feature over its valid
    patches, of the last layer or of ``layer`` (0-based), in manifest order."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}: choose one of {POOLINGS}")
    from .data.clips import SAMPLE_RATE, ClipBatches, clips_from_manifest

    clips = clips_from_manifest(manifest_path)
    max_samples = None if max_seconds is None else max(1, int(max_seconds * SAMPLE_RATE))
    batches = ClipBatches(clips, torch.device(device), batch_size, num_workers, max_samples, progress=progress,
                          desc=desc)
    out = None
    for batch in batches:
        x, mask = backbone.extract_features(batch.source, batch.padding_mask, layer=layer)
        x = x.float()
        keep = torch.ones_like(x[..., :1]) if mask is None else (~mask).unsqueeze(-1).float()
        count = keep.sum(dim=1).clamp_min(1.0)
        pooled = (x * keep).sum(dim=1) / count
        if pooling == "mean+std":
            var = (((x - pooled.unsqueeze(1)) ** 2) * keep).sum(dim=1) / count
            pooled = torch.cat([pooled, var.sqrt()], dim=-1)
        if out is None:
            out = np.zeros((len(clips), pooled.size(-1)), dtype=np.float32)
        out[batch.positions] = pooled.cpu().numpy()
    return out


# ---------------------------------------------------------------------------- labels
def read_split_labels(data: str, split: str, label_ext: str, num_classes: Optional[int]):
    from .data.manifest import read_label_file, read_manifest

    manifest = os.path.join(data, f"{split}.tsv")
    entries = len(read_manifest(manifest))
    return manifest, read_label_file(os.path.join(data, f"{split}.{label_ext}"), entries, num_classes)


def class_count(data: str, *label_lists) -> int:
    from .data.manifest import read_class_map

    path = os.path.join(data, "labels.csv")
    if os.path.isfile(path):
        return len(read_class_map(path))
    return 1 + max(c for labels in label_lists for ids in labels for c in ids)


# ---------------------------------------------------------------------------- classifier
def fit_and_score(train_x, train_labels, eval_x, eval_labels, num_classes: int, multilabel: bool,
                  C: float = 1.0, max_iter: int = 2000):
    """(metric name, value) of a logistic-regression probe trained on ``train_x``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    train_x, eval_x = scaler.transform(train_x), scaler.transform(eval_x)
    if multilabel:
        y = np.zeros((len(train_labels), num_classes), dtype=np.int64)
        for i, ids in enumerate(train_labels):
            y[i, ids] = 1
        present = np.flatnonzero(y.sum(0) > 0)
        clf = OneVsRestClassifier(LogisticRegression(C=C, max_iter=max_iter)).fit(train_x, y[:, present])
        scores = np.full((len(eval_x), num_classes), -np.inf)
        scores[:, present] = clf.decision_function(eval_x).reshape(len(eval_x), -1)
        targets = np.zeros((len(eval_labels), num_classes), dtype=np.float32)
        for i, ids in enumerate(eval_labels):
            targets[i, ids] = 1.0
        return "mAP", mean_average_precision(np.nan_to_num(scores, neginf=-1e9), targets)
    y = np.asarray([ids[0] for ids in train_labels])
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(train_x, y)
    predicted = clf.classes_[clf.predict_proba(eval_x).argmax(axis=1)]
    return "accuracy", float(np.mean(predicted == np.asarray([ids[0] for ids in eval_labels])))


# ---------------------------------------------------------------------------- runs
def run_probe(encoders: Dict[str, str], data: str, train_split: str = "train", eval_split: str = "test",
              label_ext: str = "lbl", multilabel: Optional[bool] = None, random_baseline: bool = True,
              seed: int = 0, device="cpu", batch_size: int = 8, num_workers: int = 0,
              max_seconds: Optional[float] = None, C: float = 1.0, progress: bool = False,
              log=print, pooling: str = "mean", layer: Optional[int] = None) -> List[ProbeResult]:
    """Probe every encoder (``{name: checkpoint}``, in order) and, first, a random one like the first encoder."""
    if not encoders:
        raise ValueError("no encoder to probe")
    train_manifest, train_labels = read_split_labels(data, train_split, label_ext, None)
    eval_manifest, eval_labels = read_split_labels(data, eval_split, label_ext, None)
    num_classes = class_count(data, train_labels, eval_labels)
    if multilabel is None:
        multilabel = any(len(ids) != 1 for ids in train_labels + eval_labels)
    todo = []
    if random_baseline:
        todo.append((RANDOM, None))
    todo += list(encoders.items())
    results = []
    like = None
    for name, path in todo:
        start = time.time()
        if path is None:
            like = like or load_backbone(next(iter(encoders.values())), device)
            backbone, shown = random_backbone(like, seed, device), f"random init (seed {seed})"
        else:
            backbone, shown = load_backbone(path, device), path
            like = like or backbone
        feats = {}
        for split, manifest in ((train_split, train_manifest), (eval_split, eval_manifest)):
            feats[split] = clip_features(backbone, manifest, device, batch_size, num_workers, max_seconds,
                                         progress, desc=f"{name} {split}", pooling=pooling, layer=layer)
        metric, value = fit_and_score(feats[train_split], train_labels, feats[eval_split], eval_labels,
                                      num_classes, multilabel, C)
        result = ProbeResult(name, shown, metric, value, len(train_labels), len(eval_labels),
                             int(feats[train_split].shape[1]), time.time() - start)
        log(f"probe {name}: {metric} {value:.4f} on {eval_split} ({len(eval_labels)} clips), "
            f"trained on {train_split} ({len(train_labels)} clips), {result.seconds:.1f} s")
        results.append(result)
    return results


def results_table(results: List[ProbeResult], eval_split: str) -> str:
    if not results:
        return ""
    metric = results[0].metric
    base = next((r.value for r in results if r.encoder == RANDOM), None)
    lines = [f"| encoder | linear probe {metric} ({eval_split}) | vs random | features | checkpoint |",
             "|---|---|---|---|---|"]
    for r in results:
        delta = "" if base is None or r.encoder == RANDOM else f"{r.value - base:+.4f}"
        lines.append(f"| {r.encoder} | {r.value:.4f} | {delta} | {r.dim} | `{r.checkpoint}` |")
    return "\n".join(lines)
