"""How semantic a tokenizer's labels are, and how much its distillation beats a constant.

BEATs' premise is that each iteration's tokenizer gives labels closer to the meaning of the audio.
Two measures make that visible with little noise, for every tokenizer of a loop (iter1's random
projection included):

* **purity** and **normalised mutual information (NMI)** between the patch labels and the class
  of the clip each patch belongs to, on a labelled split (:func:`label_agreement`). Every
  non-padded patch counts once and carries its clip's class (single-label data); per-clip
  aggregation is not used. Purity: the share of patches whose code's most frequent class is their
  own class. NMI: ``I(code; class) / mean(H(code), H(class))`` (arithmetic mean, as scikit-learn's
  default). Both are 1 for labels that name the class and near 0 for labels unrelated to it, but
  with many codes and few patches both are biased upwards: each comes with its chance level, the
  same measure after the clips' classes are shuffled among the clips (``*_chance``).
* **the constant baseline of the distillation cosine** (:func:`cosine_baseline`): the mean cosine
  on the validation split between the teacher's per-patch targets and the best constant
  prediction, the mean of the l2-normalised targets of the training split (the constant that
  maximises the mean cosine). A tokenizer's validation cosine means something only above it.

The pipeline's ``tokenizers`` stage runs both for every tokenizer (``pipeline/diagnostics.py``).
"""

from typing import Callable, Dict, NamedTuple, Optional, Sequence

import numpy as np
import torch

Labeller = Callable[[torch.Tensor], torch.Tensor]  # waveforms (B, L) -> labels (B, N)


# ---------------------------------------------------------------------------- the measures
def contingency(codes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``(codes used, classes present)`` counts of the pairs ``(codes[i], classes[i])``."""
    codes, classes = np.asarray(codes).ravel(), np.asarray(classes).ravel()
    if codes.shape != classes.shape:
        raise ValueError(f"{codes.size} codes but {classes.size} classes: one class per patch")
    if codes.size == 0:
        raise ValueError("no patches to compare")
    _, code_index = np.unique(codes, return_inverse=True)
    _, class_index = np.unique(classes, return_inverse=True)
    table = np.zeros((code_index.max() + 1, class_index.max() + 1), dtype=np.float64)
    np.add.at(table, (code_index, class_index), 1.0)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def purity(codes: np.ndarray, classes: np.ndarray) -> float:
    """Share of patches whose code's most frequent class is their class."""
    table = contingency(codes, classes)
    return float(table.max(axis=1).sum() / table.sum())


def normalized_mutual_info(codes: np.ndarray, classes: np.ndarray) -> float:
    """``I(code; class) / ((H(code) + H(class)) / 2)``; 1 when both are constant and equal."""
    table = contingency(codes, classes)
    h_code, h_class = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_code + h_class == 0:
        return 1.0
    mutual = h_code + h_class - _entropy(table.ravel())
    return float(max(mutual, 0.0) / ((h_code + h_class) / 2))


class Agreement(NamedTuple):
    purity: float
    nmi: float
    purity_chance: float  # the same with the clips' classes shuffled among the clips
    nmi_chance: float
    patches: int
    clips: int

    def as_dict(self) -> Dict[str, float]:
        return self._asdict()


def label_agreement(clip_codes: Sequence[np.ndarray], clip_classes: Sequence[int], seed: int = 0) -> Agreement:
    """Purity and NMI of the per-patch codes of every clip (``clip_codes[i]``: the codes of clip ``i``'s
    valid patches) against the class of their clip, and their chance levels (classes shuffled among
    the clips with ``seed``)."""
    if len(clip_codes) != len(clip_classes):
        raise ValueError(f"{len(clip_codes)} clips of codes but {len(clip_classes)} classes")
    sizes = [len(c) for c in clip_codes]
    codes = np.concatenate([np.asarray(c).ravel() for c in clip_codes])
    classes = np.repeat(np.asarray(clip_classes), sizes)
    shuffled = np.repeat(np.random.default_rng(seed).permutation(np.asarray(clip_classes)), sizes)
    return Agreement(purity(codes, classes), normalized_mutual_info(codes, classes), purity(codes, shuffled),
                     normalized_mutual_info(codes, shuffled), int(codes.size), len(clip_codes))


# ---------------------------------------------------------------------------- over a manifest
def clip_batches(manifest: str, device="cpu", batch_size: int = 16, max_samples: Optional[int] = None):
    """Batches of the clips of ``manifest``, each one ``(positions, waveforms (B, L))`` of equal-length
    clips (no padding, so every patch a tokenizer labels is a real one)."""
    from .data.clips import ClipBatches, clips_from_manifest

    for batch in ClipBatches(clips_from_manifest(manifest), torch.device(device), batch_size,
                             max_samples=max_samples):
        lengths = torch.as_tensor(batch.lengths)
        for length in lengths.unique().tolist():
            rows = torch.nonzero(lengths == length).flatten()
            yield [batch.positions[r] for r in rows.tolist()], batch.source[rows.to(batch.source.device), :length]


@torch.no_grad()
def manifest_codes(labeller: Labeller, manifest: str, device="cpu", batch_size: int = 16,
                   max_samples: Optional[int] = None) -> Dict[int, np.ndarray]:
    """``{manifest position: codes of its patches}`` of every readable clip."""
    out = {}
    for positions, source in clip_batches(manifest, device, batch_size, max_samples):
        for position, row in zip(positions, labeller(source).cpu().numpy()):
            out[position] = row
    return out


def split_agreement(labeller: Labeller, split, device="cpu", max_samples: Optional[int] = None) -> Agreement:
    """:func:`label_agreement` of a tokenizer on a single-label
    :class:`~beats_fairseq.evaluation.LabelledSplit`."""
    codes = manifest_codes(labeller, split.manifest, device, max_samples=max_samples)
    classes = split.classes()
    positions = sorted(codes)
    return label_agreement([codes[p] for p in positions], [int(classes[p]) for p in positions])


def tokenizer_labeller(checkpoint: str, device="cpu") -> Labeller:
    """The labels of a trained tokenizer checkpoint (this project's or official)."""
    from .loading import load_frozen_tokenizer

    tokenizer = load_frozen_tokenizer(checkpoint, device=str(device))
    return lambda source: tokenizer.extract_labels(source)


def random_projection_labeller(cfg, device="cpu") -> Labeller:
    """The labels iter1 learns from: the random projection of a ``beats`` model config (``codebook_size``,
    ``codebook_dim``, ``input_patch_size``, ``tokenizer_seed``) on the fbank normalised as its encoder's
    (``fbank_mean``, ``fbank_std``), exactly as in its pre-training."""
    from .modules.fbank import compute_fbank
    from .tokenizers.random_projection import RandomProjectionTokenizer

    tokenizer = RandomProjectionTokenizer(int(cfg.codebook_size), int(cfg.codebook_dim), int(cfg.input_patch_size),
                                          int(cfg.tokenizer_seed)).to(device)
    return lambda source: tokenizer.labels_from_fbank(compute_fbank(source, cfg.fbank_mean, cfg.fbank_std))


# ---------------------------------------------------------------------------- distillation
class CosineBaseline(NamedTuple):
    cosine: float  # mean cosine on the validation split of the constant prediction
    train_patches: int
    valid_patches: int


@torch.no_grad()
def _targets(teacher, manifest: str, device, max_samples: Optional[int], max_clips: Optional[int] = None):
    """The teacher's per-patch targets ``(P, D)`` of the clips of ``manifest`` (the first ``max_clips``)."""
    blocks, seen = [], 0
    for _, source in clip_batches(manifest, device, max_samples=max_samples):
        targets, mask = teacher(source)
        blocks.append(targets.flatten(0, 1) if mask is None else targets[~mask])
        seen += source.size(0)
        if max_clips is not None and seen >= max_clips:
            break
    return torch.cat(blocks).float()


def cosine_baseline(teacher, train_manifest: str, valid_manifest: str, device="cpu",
                    max_samples: Optional[int] = None, max_train_clips: Optional[int] = 1000) -> CosineBaseline:
    """The mean cosine on ``valid_manifest`` of the best constant prediction of ``teacher``'s targets: the
    mean of its l2-normalised targets over (the first ``max_train_clips`` clips of) ``train_manifest``."""
    train = _targets(teacher, train_manifest, device, max_samples, max_train_clips)
    constant = torch.nn.functional.normalize(torch.nn.functional.normalize(train, dim=-1).mean(0), dim=0)
    valid = _targets(teacher, valid_manifest, device, max_samples)
    cosine = torch.nn.functional.normalize(valid, dim=-1) @ constant
    return CosineBaseline(float(cosine.mean()), int(train.size(0)), int(valid.size(0)))
