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

Nothing is tuned on the evaluation split. The splits, their labels, the class count and the
metric are :class:`beats_fairseq.evaluation.LabelledSplit` (``read_splits``).

The raw-fbank baseline (:func:`fbank_baseline`) is the same probe without any encoder: every
clip's fbank, computed by the project's one front end (:func:`beats_fairseq.modules.fbank.compute_fbank`:
Kaldi recipe, Povey window, as the official BEATs code), is pooled into the mean and the standard
deviation of every mel bin over the clip's frames (256 values) and fit the same way (C = 1).
The normalisation of the fbank does not matter (the features are standardised); the window
does, a little.

The command ``beats-probe`` (``beats_fairseq/cli/probe.py``) runs it::

    beats-probe --data demo_data --encoder iter1=runs/iter1/checkpoints/checkpoint_last.pt --eval-split test
"""

import copy
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from .constants import POOLINGS
from .evaluation import LabelledSplit, Score, score
from .tables import Table

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


# ---------------------------------------------------------------------------- classifier
def fit_and_score(train_x, train: LabelledSplit, eval_x, evaluated: LabelledSplit, C: float = 1.0,
                  max_iter: int = 2000) -> Score:
    """The metric of ``evaluated`` for a logistic-regression probe trained on ``train_x``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    train_x, eval_x = scaler.transform(train_x), scaler.transform(eval_x)
    scores = np.full((len(eval_x), evaluated.num_classes), -1e9)
    if train.multilabel:
        y = train.targets().astype(np.int64)
        present = np.flatnonzero(y.sum(0) > 0)
        clf = OneVsRestClassifier(LogisticRegression(C=C, max_iter=max_iter)).fit(train_x, y[:, present])
        scores[:, present] = clf.decision_function(eval_x).reshape(len(eval_x), -1)
    else:
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(train_x, train.classes())
        scores[:, clf.classes_] = clf.predict_proba(eval_x)
    return score(scores, evaluated)


# ---------------------------------------------------------------------------- runs
def run_probe(encoders: Dict[str, str], train: LabelledSplit, evaluated: LabelledSplit, random_baseline: bool = True,
              seed: int = 0, device="cpu", batch_size: int = 8, num_workers: int = 0,
              max_seconds: Optional[float] = None, C: float = 1.0, progress: bool = False,
              log=print, pooling: str = "mean", layer: Optional[int] = None) -> List[ProbeResult]:
    """Probe every encoder (``{name: checkpoint}``, in order) and, first, a random one like the first
    encoder: fit on ``train``, scored on ``evaluated`` (:func:`beats_fairseq.evaluation.read_splits`)."""
    if not encoders:
        raise ValueError("no encoder to probe")
    todo = [(RANDOM, None)] if random_baseline else []
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
        feats = [clip_features(backbone, split.manifest, device, batch_size, num_workers, max_seconds, progress,
                               desc=f"{name} {split.name}", pooling=pooling, layer=layer) for split in (train, evaluated)]
        metric, value = fit_and_score(feats[0], train, feats[1], evaluated, C)
        result = ProbeResult(name, shown, metric, value, len(train), len(evaluated), int(feats[0].shape[1]),
                             time.time() - start)
        log(f"probe {name}: {metric} {value:.4f} on {evaluated.name} ({len(evaluated)} clips), "
            f"trained on {train.name} ({len(train)} clips), {result.seconds:.1f} s")
        results.append(result)
    return results


# ---------------------------------------------------------------------------- raw-fbank baseline
FBANK_DESCRIPTION = ("logistic regression on mean+std pooled 128-bin fbank (this project's Kaldi front end, "
                     "Povey window), standardised, C = 1")


@torch.no_grad()
def fbank_statistics(manifest: str, batch_size: int = 16) -> np.ndarray:
    """``(M, 256)`` float32: per clip, the mean and the std of each of the 128 fbank bins over its frames."""
    from .data.clips import ClipBatches, clips_from_manifest
    from .modules.fbank import compute_fbank, num_frames

    clips = clips_from_manifest(manifest)
    out = np.zeros((len(clips), 256), dtype=np.float32)
    for batch in ClipBatches(clips, torch.device("cpu"), batch_size):
        fbank = compute_fbank(batch.source)
        for row, (position, length) in enumerate(zip(batch.positions, batch.lengths)):
            frames = fbank[row, : num_frames(length)]
            out[position, :128] = frames.mean(0).numpy()
            out[position, 128:] = frames.std(0, unbiased=False).numpy()
    return out


def fbank_baseline(train: LabelledSplit, evaluated: LabelledSplit) -> Score:
    """No pre-training at all: :data:`FBANK_DESCRIPTION`, fit on ``train`` and scored on ``evaluated``."""
    return fit_and_score(fbank_statistics(train.manifest), train, fbank_statistics(evaluated.manifest), evaluated,
                         C=1.0, max_iter=3000)


def results_table(results: List[ProbeResult], eval_split: str) -> Table:
    """Every encoder's value, its difference to the random init, its feature size and checkpoint."""
    metric = results[0].metric if results else "score"
    base = next((r.value for r in results if r.encoder == RANDOM), None)
    table = Table(["encoder", f"linear probe {metric} ({eval_split})", "vs random", "features", "checkpoint"])
    for r in results:
        delta = "" if base is None or r.encoder == RANDOM else f"{r.value - base:+.4f}"
        table.add(r.encoder, f"{r.value:.4f}", delta, r.dim, r.checkpoint)
    return table
