"""Probes: how good are an encoder's frozen features for a labelled task?

The same procedure for every encoder (each pre-training iteration, and a randomly initialised
encoder of the same architecture as the baseline):

1. every clip of the training and evaluation manifests goes through the frozen encoder alone
   (``extract_features``, last layer; clips zero-padded in batches and masked, as elsewhere);
2. the clip's feature pools its valid (non-padded) patches, of the last layer or of ``layer``
   (0-based): ``pooling="bands"`` (the default) keeps each of the 8 frequency bands of patches
   apart and takes the mean and the standard deviation over time of each, as the fbank baseline
   does per mel bin; ``"mean"`` is the mean over all patches (what the fine-tuning head reads),
   ``"mean+std"`` adds their standard deviation. Pooling over frequency mixes the bands, and at
   the small scale it hides most of what an encoder knows (``docs/diagnostics.md``);
3. features are standardised (mean/std of the training split) and a logistic regression
   (sklearn, L2, ``C``) is fit on the training split: one multinomial model for single-label
   data, one binary model per class (one-vs-rest) for multi-label data;
4. it is scored on the held-out split: accuracy (single-label) or mAP over the classes with a
   positive clip (multi-label, ``beats_fairseq.metrics``).

That is the ``linear`` probe (the default). The other probes (``probe=``, :data:`PROBES`, trained
in ``beats_fairseq/probe_heads.py``, early stopping on a validation split ``valid``) read the same
clip features: ``weighted-layers`` those of every layer (a learnt softmax-weighted sum, SUPERB),
``mlp`` those of one layer (one hidden layer, HEAR). Every probe can be fit on a subset of the
training clips (``train_positions``: a label budget).

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
    beats-probe --data demo_data --encoder iter1=... --probe weighted-layers --valid-split valid
"""

import copy
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .constants import POOLINGS, PROBES
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
    probe: str = "linear"  # PROBES
    layer_weights: Optional[List[float]] = None  # weighted-layers: the learnt weight of every layer

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


def pool(x: torch.Tensor, mask: Optional[torch.Tensor], pooling: str, bands: int = 1) -> torch.Tensor:
    """``(B, N, C)`` patch features (time-major, ``bands`` patches per time step) -> the clip feature over
    the valid patches: ``mean`` ``(B, C)``; ``mean+std`` ``(B, 2C)``; ``bands`` ``(B, 2 * bands * C)``, the
    mean and the std over time of every frequency band (all bands' means, then all bands' stds)."""
    from .modules.pooling import masked_mean, stats_feature

    if pooling == "mean":
        return masked_mean(x.float(), mask)
    return stats_feature(x.float(), mask, bands if pooling == "bands" else 1)


@torch.no_grad()
def clip_features(backbone, manifest_path: str, device="cpu", batch_size: int = 8, num_workers: int = 0,
                  max_seconds: Optional[float] = None, progress: bool = False, desc: str = "features",
                  pooling: str = "bands", layer: Optional[int] = None, all_layers: bool = False):
    """``(M, D)`` float32: each clip's pooled feature over its valid patches (:func:`pool`), of the last
    layer or of ``layer`` (0-based), in manifest order; with ``all_layers``, ``(M, L, D)``: that of every
    layer."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}: choose one of {POOLINGS}")
    from .data.clips import SAMPLE_RATE, ClipBatches, clips_from_manifest

    clips = clips_from_manifest(manifest_path)
    max_samples = None if max_seconds is None else max(1, int(max_seconds * SAMPLE_RATE))
    batches = ClipBatches(clips, torch.device(device), batch_size, num_workers, max_samples, progress=progress,
                          desc=desc)
    out, bands = None, backbone.frequency_bands
    for batch in batches:
        if all_layers:
            front = backbone.frontend(batch.source, batch.padding_mask)
            _, layers = backbone.encode(front.embeddings, front.padding_mask)
            pooled = torch.stack([pool(h, front.padding_mask, pooling, bands) for h in layers], dim=1)
        else:
            pooled = pool(*backbone.extract_features(batch.source, batch.padding_mask, layer=layer), pooling, bands)
        if out is None:
            out = np.zeros((len(clips), *pooled.shape[1:]), dtype=np.float32)
        out[batch.positions] = pooled.cpu().numpy()
    return out


# ---------------------------------------------------------------------------- classifier
def fit_and_score(train_x, train: LabelledSplit, eval_x, evaluated: LabelledSplit, C: float = 1.0,
                  max_iter: int = 2000) -> Score:
    """The metric of ``evaluated`` for a logistic-regression probe trained on ``train_x``
    (:func:`beats_fairseq.linear_probe.fit_linear`)."""
    from .linear_probe import fit_linear

    return score(fit_linear(train_x, train.targets(), train.multilabel, C, max_iter).logits(eval_x), evaluated)


def check_valid(probe: str, valid: Optional[LabelledSplit]) -> None:
    if probe != "linear" and valid is None:
        raise ValueError(f"the {probe} probe stops early on a validation split: give one (beats-probe --valid-split)")


def fit_probe(probe: str, train_x, train: LabelledSplit, eval_x, evaluated: LabelledSplit, valid_x=None,
              valid: Optional[LabelledSplit] = None, C: float = 1.0, head=None,
              train_positions: Optional[Sequence[int]] = None) -> Tuple[Score, Optional[List[float]]]:
    """(score on ``evaluated``, learnt layer weights or None) of a ``probe`` (:data:`PROBES`) fit on the clips
    ``train_positions`` (default: all) of ``train``; ``weighted-layers`` and ``mlp`` stop early on ``valid``
    (``head``: their :class:`~beats_fairseq.probe_heads.HeadSettings`)."""
    if probe not in PROBES:
        raise ValueError(f"probe {probe!r}: choose one of {PROBES}")
    if train_positions is not None:
        positions = list(train_positions)
        train_x, train = train_x[positions], train.subset(positions)
    if probe == "linear":
        return fit_and_score(train_x, train, eval_x, evaluated, C), None
    from .probe_heads import HeadSettings, fit_head

    check_valid(probe, valid)
    result = fit_head(probe, train_x, train, valid_x, valid, eval_x, evaluated, head or HeadSettings())
    return result.score, result.layer_weights


# ---------------------------------------------------------------------------- runs
def run_probe(encoders: Dict[str, str], train: LabelledSplit, evaluated: LabelledSplit, random_baseline: bool = True,
              seed: int = 0, device="cpu", batch_size: int = 8, num_workers: int = 0,
              max_seconds: Optional[float] = None, C: float = 1.0, progress: bool = False,
              log=print, pooling: str = "bands", layer: Optional[int] = None, probes: Sequence[str] = ("linear",),
              valid: Optional[LabelledSplit] = None, train_positions: Optional[Sequence[int]] = None,
              head=None) -> List[ProbeResult]:
    """Every probe of ``probes`` (:data:`PROBES`) of every encoder (``{name: checkpoint}``, in order) and, first,
    of a random one like the first encoder: fit on ``train`` (its clips ``train_positions``: a label budget),
    scored on ``evaluated`` (:func:`beats_fairseq.evaluation.read_splits`); :func:`fit_probe` says how. The
    features of each encoder are computed once for all probes."""
    if not encoders:
        raise ValueError("no encoder to probe")
    for probe in probes:
        check_valid(probe, valid)
    todo = [(RANDOM, None)] if random_baseline else []
    todo += list(encoders.items())
    all_layers = "weighted-layers" in probes
    splits = (train, evaluated) + ((valid,) if set(probes) - {"linear"} else ())
    clips = len(train) if train_positions is None else len(train_positions)
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
                               desc=f"{name} {split.name}", pooling=pooling, layer=layer, all_layers=all_layers)
                 for split in splits]
        for probe in probes:
            x = feats if probe == "weighted-layers" or not all_layers else \
                [f[:, -1 if layer is None else layer] for f in feats]
            (metric, value), weights = fit_probe(probe, x[0], train, x[1], evaluated, x[-1], valid, C, head,
                                                 train_positions)
            result = ProbeResult(name, shown, metric, value, clips, len(evaluated), int(x[0].shape[-1]),
                                 time.time() - start, probe, weights)
            log(f"{probe} probe {name}: {metric} {value:.4f} on {evaluated.name} ({len(evaluated)} clips), "
                f"trained on {train.name} ({clips} clips), {result.seconds:.1f} s"
                + ("" if weights is None else ", layer weights " + " ".join(f"{w:.2f}" for w in weights)))
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
    metric, kind = (results[0].metric, results[0].probe) if results else ("score", "linear")
    if any(r.probe != kind for r in results):
        raise ValueError("results_table shows the results of one probe: use probe_tables")
    base = next((r.value for r in results if r.encoder == RANDOM), None)
    table = Table(["encoder", f"{kind} probe {metric} ({eval_split})", "vs random", "features", "checkpoint"])
    for r in results:
        delta = "" if base is None or r.encoder == RANDOM else f"{r.value - base:+.4f}"
        table.add(r.encoder, f"{r.value:.4f}", delta, r.dim, r.checkpoint)
    return table


def probe_tables(results: List[ProbeResult], eval_split: str) -> List[Table]:
    """One :func:`results_table` per probe, in the order of the results."""
    kinds = dict.fromkeys(r.probe for r in results)
    return [results_table([r for r in results if r.probe == kind], eval_split) for kind in kinds]
