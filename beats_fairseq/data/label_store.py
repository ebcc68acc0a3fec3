"""Precomputed tokenizer labels: the on-disk store and the dataset that reads it.

Iter2+ pre-training needs a label for every patch from a frozen, trained tokenizer.
Computing them in every update (``model.tokenizer_path`` alone) costs one tokenizer forward
pass per batch; ``beats-precompute-labels`` runs the tokenizer once over a manifest and
``task.precomputed_labels`` reads the result instead.

Files in the label folder, per split::

    {split}.labels.npy   int16 (int32 when the codebook has more than 32767 codes), shape (P,):
                         the labels of every clip, concatenated in manifest order
    {split}.offsets.npy  int64, shape (M + 1,), M = manifest entries (root line excluded):
                         entry j has labels[offsets[j]:offsets[j + 1]] (time-major patches,
                         n = 8 * t + f); 0 labels for entries that were dropped or unreadable
    {split}.labels.json  what the labels are valid for (the sidecar, checked at load time)

The labels of a trained tokenizer depend on the whole clip it sees (it is a Transformer),
so they are valid only for

* the same manifest (sha256 of its text, which includes the root folder and every line),
* the same crop of every clip (``crop`` mode and ``max_sample_size``; only relevant when some
  clip is longer than ``max_sample_size``, and a ``random`` crop cannot be precomputed),
* the same sample rate,
* the same tokenizer (a fingerprint of its weights and of the settings that shape its labels:
  architecture, fbank normalisation, codebook).

:func:`open_label_store` and :class:`PrecomputedLabelsDataset` check all of it and raise
:class:`LabelStoreMismatch` naming the field and the command that rewrites the labels.
Every clip is labelled **alone** (no padding), which is what a training batch without
padding sees. Each item is also checked when it is read: its label count must equal the
patch count of the waveform read from disk (a changed audio file raises).
"""

import hashlib
import json
import logging
import os
import shlex
import sys
from typing import Optional

import numpy as np
import torch

from ..modules.backbone import BACKBONE_FIELDS, TRAINING_ONLY_FIELDS
from ..modules.fbank import NUM_MEL_BINS, num_frames
from .audio_dataset import AudioDataset

logger = logging.getLogger(__name__)

FORMAT = "beats-precomputed-labels"
VERSION = 1
PAD_LABEL = -1  # batch target of patches without a precomputed label; never predicted
class LabelStoreMismatch(ValueError):
    """Precomputed labels that do not belong to the current manifest, crop or tokenizer."""


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def label_files(label_dir: str, split: str):
    """(labels .npy, offsets .npy, sidecar .json) paths of ``split`` in ``label_dir``."""
    base = os.path.join(label_dir, split)
    return base + ".labels.npy", base + ".offsets.npy", base + ".labels.json"


def num_patches(num_samples: int, patch_size: int = 16) -> int:
    """Patches of a clip of ``num_samples`` at 16 kHz processed alone (complete 16-frame rows)."""
    return (num_frames(int(num_samples)) // patch_size) * (NUM_MEL_BINS // patch_size)


# ---------------------------------------------------------------------------- identities
def tokenizer_identity(tokenizer, path: Optional[str] = None) -> dict:
    """What defines a tokenizer's labels: a fingerprint of its state dict and label-relevant config."""
    cfg = tokenizer.cfg
    settings = {k: getattr(cfg, k) for k in BACKBONE_FIELDS if k not in TRAINING_ONLY_FIELDS}  # eval-mode labels only
    settings.update(quant_n=int(cfg.codebook_size), quant_dim=int(cfg.quant_dim))  # fingerprint keys: never rename
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    out = {
        "fingerprint": digest.hexdigest(),
        "codebook_size": int(cfg.codebook_size),
        "patch_size": int(cfg.input_patch_size),
        "fbank_mean": float(cfg.fbank_mean),
        "fbank_std": float(cfg.fbank_std),
    }
    if path is not None:
        out["path"] = os.path.abspath(path)
        out["file_sha256"] = file_sha256(path)
    return out


def manifest_identity(manifest_path: str) -> dict:
    with open(manifest_path, "rb") as f:
        text = f.read()
    entries = max(0, len(text.decode("utf-8").splitlines()) - 1)
    return {"path": os.path.abspath(manifest_path), "bytes": len(text),
            "sha256": hashlib.sha256(text).hexdigest(), "entries": entries}


def crop_identity(dataset: AudioDataset) -> dict:
    """The crop every clip of ``dataset`` gets; ``mode`` is ``none`` when no clip is cropped."""
    limit = dataset._crop_limit()
    cropped = 0 if limit is None else int((dataset.raw_sizes > limit).sum())
    if cropped == 0:
        return {"mode": "none", "max_sample_size": limit, "num_cropped": 0}
    return {"mode": dataset.crop, "max_sample_size": limit, "num_cropped": cropped}


def regenerate_hint(meta: dict) -> str:
    command = meta.get("command")
    if command:
        return f"rewrite them with the current settings, e.g. (the command that wrote them): {command}"
    return "rewrite them with beats-precompute-labels for the current manifest, crop and tokenizer"


# ---------------------------------------------------------------------------- writing
def label_dtype(codebook_size: int):
    return np.int16 if int(codebook_size) <= np.iinfo(np.int16).max + 1 else np.int32


def write_label_store(label_dir: str, split: str, labels_per_entry, meta: dict) -> dict:
    """Write ``labels_per_entry`` (one 1-D int array per manifest entry, empty for none) and the sidecar."""
    os.makedirs(label_dir, exist_ok=True)
    codebook = int(meta["tokenizer"]["codebook_size"])
    dtype = label_dtype(codebook)
    counts = np.asarray([len(x) for x in labels_per_entry], dtype=np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    for j, x in enumerate(labels_per_entry):
        if len(x) and (int(np.min(x)) < 0 or int(np.max(x)) >= codebook):
            raise ValueError(f"split {split}, manifest entry {j}: labels outside [0, {codebook})")
    parts = [np.asarray(x, dtype=dtype) for x in labels_per_entry]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    labels_path, offsets_path, meta_path = label_files(label_dir, split)
    meta = dict(meta, format=FORMAT, version=VERSION, split=split, dtype=np.dtype(dtype).name,
                total_patches=int(offsets[-1]), num_labelled=int((counts > 0).sum()))
    # sidecar last: a folder without it (interrupted write) is never taken for valid labels
    if os.path.exists(meta_path):
        os.remove(meta_path)
    np.save(labels_path, flat)
    np.save(offsets_path, offsets)
    with open(meta_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(meta_path + ".tmp", meta_path)
    return meta


def command_line(argv=None) -> str:
    """The precompute command (``argv``: its arguments, default ``sys.argv[1:]``) as a shell line
    prefixed with its working folder."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    head = ["beats-precompute-labels"] if prog == "beats-precompute-labels" else \
        ["python", "-m", "beats_fairseq.cli.precompute_labels"]
    argv = sys.argv[1:] if argv is None else list(argv)
    return f"cd {shlex.quote(os.getcwd())} && " + " ".join(shlex.quote(str(a)) for a in [*head, *argv])


# ---------------------------------------------------------------------------- reading
class LabelStore:
    """Read-only view of one split's precomputed labels (memory-mapped)."""

    def __init__(self, label_dir: str, split: str):
        self.label_dir, self.split = label_dir, split
        labels_path, offsets_path, meta_path = label_files(label_dir, split)
        missing = [p for p in (meta_path, labels_path, offsets_path) if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"precomputed labels for split {split!r} not found in {label_dir!r} (missing {', '.join(missing)}): "
                f"run beats-precompute-labels --splits {split} --out {label_dir} ... for this split, "
                "or set task.precomputed_labels=null to compute labels on the fly"
            )
        with open(meta_path, encoding="utf-8") as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            self.mismatch("format", f"{self.meta.get('format')} v{self.meta.get('version')}", f"{FORMAT} v{VERSION}")
        self.labels = np.load(labels_path, mmap_mode="r")
        self.offsets = np.load(offsets_path)
        if self.offsets[-1] != len(self.labels) or len(self.offsets) != self.meta["manifest"]["entries"] + 1:
            raise LabelStoreMismatch(f"{meta_path}: the label files are truncated or do not belong together; "
                                     + regenerate_hint(self.meta))
        self.unreadable = set(int(j) for j in self.meta.get("unreadable", []))

    def mismatch(self, field: str, stored, current):
        _, _, meta_path = label_files(self.label_dir, self.split)
        raise LabelStoreMismatch(
            f"precomputed labels {meta_path} do not match the current run: {field} is {current!r} now but the "
            f"labels were computed for {stored!r}. Labels stay valid only for the same manifest, crop and "
            f"tokenizer; {regenerate_hint(self.meta)}"
        )

    @property
    def codebook_size(self) -> int:
        return int(self.meta["tokenizer"]["codebook_size"])

    def count(self, entry: int) -> int:
        return int(self.offsets[entry + 1] - self.offsets[entry])

    def get(self, entry: int) -> np.ndarray:
        """Labels of manifest entry ``entry`` (0-based), int64."""
        return np.asarray(self.labels[self.offsets[entry]:self.offsets[entry + 1]], dtype=np.int64)

    # -- checks
    def check_dataset(self, dataset: AudioDataset) -> None:
        """Manifest, sample rate, crop, and a label row for every clip the dataset keeps."""
        stored = self.meta["manifest"]
        now = manifest_identity(dataset.manifest.manifest_path)
        if (stored["sha256"], stored["bytes"]) != (now["sha256"], now["bytes"]):
            self.mismatch("manifest", f"{stored['path']} (sha256 {stored['sha256'][:12]}..., {stored['bytes']} bytes)",
                          f"{now['path']} (sha256 {now['sha256'][:12]}..., {now['bytes']} bytes)")
        if stored["path"] != now["path"]:
            logger.info("%s: labels were computed for the same manifest text at %s", now["path"], stored["path"])
        if int(self.meta["sample_rate"]) != dataset.sample_rate:
            self.mismatch("sample_rate", self.meta["sample_rate"], dataset.sample_rate)
        crop = crop_identity(dataset)
        if crop["mode"] == "random":
            raise LabelStoreMismatch(
                f"{dataset.manifest.manifest_path}: {crop['num_cropped']} clips are longer than max_sample_size="
                f"{crop['max_sample_size']} and task.crop=random, so every epoch sees other crops; precomputed "
                "labels need a deterministic crop: set task.crop=start (or center) and precompute with the same "
                "--crop, or compute labels on the fly (task.precomputed_labels=null)"
            )
        stored_crop = self.meta["crop"]
        for key in ("mode", "max_sample_size"):
            if crop["mode"] != "none" or stored_crop["mode"] != "none":
                if stored_crop[key] != crop[key]:
                    self.mismatch(f"crop.{key}", stored_crop[key], crop[key])
        counts = self.offsets[1:] - self.offsets[:-1]
        missing = [int(j) for j in dataset.kept_indices if counts[j] == 0 and int(j) not in self.unreadable]
        if missing:
            self.mismatch("min_sample_size", self.meta.get("min_sample_size"),
                          f"{dataset.min_sample_size} (manifest entries without labels: {missing[:5]})")

    def check_tokenizer(self, identity: dict) -> None:
        stored = self.meta["tokenizer"]
        if stored["fingerprint"] != identity["fingerprint"]:
            self.mismatch("tokenizer", f"{stored.get('path')} (fingerprint {stored['fingerprint'][:12]}...)",
                          f"{identity.get('path')} (fingerprint {identity['fingerprint'][:12]}...)")
        if stored.get("path") and identity.get("path") and stored["path"] != identity["path"]:
            logger.info("labels of split %s were computed with the same tokenizer at %s", self.split, stored["path"])


def open_label_store(label_dir: str, split: str) -> LabelStore:
    return LabelStore(label_dir, split)


# ---------------------------------------------------------------------------- dataset
class PrecomputedLabelsDataset(AudioDataset):
    """:class:`AudioDataset` whose batches carry ``target`` ``(B, N)``: the precomputed labels.

    ``N`` is the patch count of the padded batch; row ``k`` holds clip ``k``'s labels followed
    by ``PAD_LABEL`` (-1) for patches the clip alone does not have (padding, and valid patches
    of a padded batch's partial last row, which the official padding rule keeps). The model
    never predicts patches labelled -1.
    """

    def __init__(self, manifest_path: str, store: LabelStore, patch_size: int = 16, **kwargs):
        super().__init__(manifest_path, **kwargs)
        self.store = store
        self.patch_size = int(patch_size)
        if int(store.meta["tokenizer"].get("patch_size", patch_size)) != self.patch_size:
            store.mismatch("tokenizer.patch_size", store.meta["tokenizer"]["patch_size"], self.patch_size)
        store.check_dataset(self)

    def extra_item(self, i):
        return {"patch_labels": self.store.get(int(self.kept_indices[i])), "entry": int(self.kept_indices[i])}

    def collate_extra(self, samples, batch):
        length = batch["net_input"]["source"].size(1)
        total = num_patches(length, self.patch_size)
        target = torch.full((len(samples), total), PAD_LABEL, dtype=torch.long)
        for k, s in enumerate(samples):
            labels = s["patch_labels"]
            expected = num_patches(min(s["source"].numel(), length), self.patch_size)
            if len(labels) != expected:
                self.store.mismatch(
                    f"patches of manifest entry {s['entry']} ({self.manifest.relpath(s['entry'])})",
                    len(labels), f"{expected} (the audio file changed since the labels were computed)",
                )
            target[k, :expected] = torch.from_numpy(labels)
        batch["target"] = target
