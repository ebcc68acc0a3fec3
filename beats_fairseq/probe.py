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

    python -m beats_fairseq.probe --data demo_data --encoder iter1=runs/iter1/checkpoints/checkpoint_last.pt \\
        --random-baseline --eval-split test
"""

import argparse
import copy
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from .metrics import mean_average_precision

logger = logging.getLogger("beats_fairseq.probe")

RANDOM = "random"
POOLINGS = ("mean", "mean+std")


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
    from .cli.common import BatchReader, clips_from_manifest

    clips = clips_from_manifest(manifest_path)
    args = argparse.Namespace(batch_size=batch_size, num_workers=num_workers, max_seconds=max_seconds,
                              no_progress=not progress, skip_bad=False)
    out = None
    for batch in BatchReader(clips, args, torch.device(device), desc=desc):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-probe",
        description="Linear probe (logistic regression on frozen mean-pooled last-layer features) of one or more "
                    "encoders and a randomly initialised one of the same architecture: trained on --train-split, "
                    "scored on --eval-split (accuracy for single-label data, mAP for multi-label).",
    )
    parser.add_argument("--data", required=True, help="folder with {split}.tsv, {split}.{label-ext} (and labels.csv)")
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=CHECKPOINT", required=True,
                        help="encoder to probe (repeatable); any checkpoint beats_fairseq.load reads")
    parser.add_argument("--train-split", default="train", help="split the probe is fit on (default: train)")
    parser.add_argument("--eval-split", default="test", help="held-out split it is scored on (default: test)")
    parser.add_argument("--label-ext", default="lbl", help="label files are {split}.{label-ext} (default: lbl)")
    parser.add_argument("--multilabel", choices=["auto", "yes", "no"], default="auto",
                        help="auto: multi-label when a clip has != 1 class ids (default: auto)")
    parser.add_argument("--no-random-baseline", action="store_true", help="skip the random-init encoder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init encoder (default: 0)")
    parser.add_argument("--pooling", choices=POOLINGS, default="mean",
                        help="clip feature: mean of the patches, or mean and std (default: mean)")
    parser.add_argument("--layer", type=int, default=None,
                        help="encoder layer to probe, 0-based (default: the last)")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the regression (default: 1)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default: 8)")
    parser.add_argument("--num-workers", type=int, default=0, help="audio reading processes (default: 0)")
    parser.add_argument("--max-seconds", type=float, default=None, help="use only the first seconds of each clip")
    parser.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser


def main(argv=None) -> int:
    from .cli.common import CliError, run_main

    def run(args):
        encoders = {}
        for item in args.encoder:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise CliError(f"--encoder {item!r}: expected NAME=CHECKPOINT")
            encoders[name] = path
        multilabel = {"auto": None, "yes": True, "no": False}[args.multilabel]
        results = run_probe(encoders, args.data, args.train_split, args.eval_split, args.label_ext, multilabel,
                            not args.no_random_baseline, args.seed, args.device, args.batch_size, args.num_workers,
                            args.max_seconds, args.C, args.progress, log=lambda m: logger.info(m),
                            pooling=args.pooling, layer=args.layer)
        table = results_table(results, args.eval_split)
        print(table)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(table + "\n")
        return 0

    return run_main("beats-probe", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
