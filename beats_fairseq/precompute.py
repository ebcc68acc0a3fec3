"""Precomputed tokenizer labels: run a frozen trained tokenizer once over manifests and store its labels.

Iter2+ pre-training then reads them with ``task.precomputed_labels=OUT`` instead of running
the tokenizer in every update (``model.tokenizer_path`` must still name the same tokenizer).
Clips are read and cropped exactly as the ``beats_pretraining`` task does for that split
(training splits: ``crop``; ``valid*``/``test*``/``eval*``/``dev*``: from the start) and every
clip is labelled alone, without padding. Format and validity rules:
``beats_fairseq/data/label_store.py`` (and docs/iterations.md).

:func:`precompute_labels` does it; the command ``beats-precompute-labels`` and the
``labels_iterN`` stages of ``beats-pipeline`` call it. A split whose labels are already up to
date (same manifest, crop, sample rate and tokenizer) is skipped unless ``force``.
"""

import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .constants import MIN_SAMPLES_ONE_PATCH
from .data.label_store import (
    LabelStore,
    LabelStoreMismatch,
    crop_identity,
    label_dtype,
    manifest_identity,
    num_patches,
    tokenizer_identity,
    write_label_store,
)
from .loading import load_frozen_tokenizer

logger = logging.getLogger("beats_fairseq.precompute")


@dataclass
class ClipSettings:
    """The pre-training task's clip settings (the labels are valid only for these)."""

    max_sample_size: int = 160000
    min_sample_size: int = MIN_SAMPLES_ONE_PATCH
    crop: str = "start"  # for training splits; a random crop cannot be precomputed


def pretraining_task(data: str, clips: ClipSettings):
    """The pre-training task with these clip settings (so clips are read and cropped as in training)."""
    from omegaconf import OmegaConf

    from .tasks.beats_pretraining import BeatsPretrainingConfig, BeatsPretrainingTask

    root = OmegaConf.create({"common": {"seed": 1, "bf16": False, "fp16": False}})
    root.task = OmegaConf.structured(BeatsPretrainingConfig(
        data=data, max_sample_size=clips.max_sample_size,
        min_sample_size=clips.min_sample_size, crop=clips.crop, bad_audio="skip",
    ))
    return BeatsPretrainingTask(root.task)


def _items(batch):
    return batch


def label_dataset(tokenizer, dataset, device, batch_size=16, num_workers=0, progress=True, desc="labels"):
    """Labels of every kept clip of ``dataset`` (each clip alone): (list per manifest entry, unreadable entries)."""
    dtype = label_dtype(tokenizer.codebook_size)  # kept compact: AS-2M has about 1e9 patches
    per_entry = [np.zeros(0, dtype=dtype) for _ in range(len(dataset.manifest))]
    labelled = set()
    order = np.argsort(dataset.sizes, kind="stable")  # similar lengths together
    loader = DataLoader(torch.utils.data.Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_items)
    patch = int(tokenizer.cfg.input_patch_size)
    with tqdm(total=len(dataset), desc=desc, unit="clip", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for items in loader:
            groups = defaultdict(list)
            for item in items:
                if item is None:
                    continue
                groups[item["source"].numel()].append(item)
            for length, group in groups.items():
                source = torch.stack([g["source"].float() for g in group]).to(device)
                codes = tokenizer.extract_labels(source).cpu().numpy()
                expected = num_patches(length, patch)
                if codes.shape[1] != expected:
                    raise RuntimeError(f"tokenizer gave {codes.shape[1]} patches for {length} samples, "
                                       f"expected {expected}")
                for g, row in zip(group, codes):
                    entry = int(dataset.kept_indices[g["id"]])
                    per_entry[entry] = row.astype(dtype)
                    labelled.add(entry)
            bar.update(len(items))
    unreadable = sorted(int(j) for j in dataset.kept_indices if int(j) not in labelled)
    return per_entry, unreadable


def up_to_date(out, split, dataset, identity, min_sample_size) -> bool:
    try:
        store = LabelStore(out, split)
        store.check_dataset(dataset)
        store.check_tokenizer(identity)
    except (FileNotFoundError, LabelStoreMismatch, KeyError, ValueError):
        return False
    return int(store.meta.get("min_sample_size", -1)) == int(min_sample_size)


def precompute_labels(tokenizer_path: str, data: str, out: str, splits: List[str], clips: ClipSettings,
                      device="cpu", batch_size: int = 16, num_workers: int = 0, force: bool = False,
                      progress: bool = False, command: Optional[str] = None) -> None:
    """Write the labels of ``{data}/{split}.tsv`` for every split to ``out``; ``command`` (the shell
    line that rewrites them) goes into the sidecar."""
    if batch_size <= 0:
        raise ValueError(f"batch size must be > 0, got {batch_size}")
    tokenizer = load_frozen_tokenizer(tokenizer_path, device=str(device))
    identity = tokenizer_identity(tokenizer, tokenizer_path)
    task = pretraining_task(data, clips)
    for split in splits:
        dataset = task.build_audio_dataset(split, shuffle=False)
        if not force and up_to_date(out, split, dataset, identity, clips.min_sample_size):
            logger.info("%s: labels in %s are up to date (same manifest, crop and tokenizer); skipped", split, out)
            continue
        start = time.time()
        per_entry, unreadable = label_dataset(tokenizer, dataset, device, batch_size, num_workers, progress,
                                              desc=f"{split} labels")
        if unreadable:
            logger.warning("%s: %d clips could not be read and have no labels (skipped in training too)",
                           split, len(unreadable))
        meta = {
            "manifest": manifest_identity(task.manifest_path(split)),
            "crop": crop_identity(dataset),
            "sample_rate": dataset.sample_rate,
            "min_sample_size": dataset.min_sample_size,
            "tokenizer": identity,
            "unreadable": unreadable,
            "command": command,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        meta = write_label_store(out, split, per_entry, meta)
        logger.info("%s: %d clips, %d patch labels (codebook %d) written to %s in %.1f s", split,
                    meta["num_labelled"], meta["total_patches"], identity["codebook_size"], out,
                    time.time() - start)
