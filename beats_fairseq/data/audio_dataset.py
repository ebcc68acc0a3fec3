"""Raw-waveform dataset over a fairseq ``.tsv`` manifest."""

import logging
from contextlib import contextmanager

import numpy as np
import torch
from fairseq.data import FairseqDataset

from .audio import MIN_SAMPLES_ONE_PATCH, AudioReadError, read_audio
from .manifest import read_manifest

logger = logging.getLogger(__name__)

CROP_MODES = ("random", "start", "center")
BAD_AUDIO_POLICIES = ("skip", "fail")


class AudioDataset(FairseqDataset):
    """Mono 16 kHz waveforms listed in a manifest.

    * Entries with ``num_samples < min_sample_size`` (default: one 16x16
      fbank patch row, 2800 samples) are dropped at load time;
      ``kept_indices[i]`` is the manifest line index (0-based, root excluded)
      of dataset item ``i`` and ``skipped_indices`` lists the dropped ones,
      so callers can align label files.
    * Clips longer than ``max_sample_size`` (or ``pad_to``) are cropped
      (``crop``: random/start/center). The random offset comes from
      ``np.random.RandomState((seed, epoch, index))``: deterministic and
      resumable, different each epoch (``set_epoch``).
    * ``pad_to`` (e.g. 160000 = 10 s) makes every batch exactly that long
      (crop longer clips, zero-pad shorter ones, padding_mask marks padding).
    * ``size``/``num_tokens`` are lengths in samples after crop/pad, so
      fairseq's ``dataset.max_tokens`` bounds the audio per batch in samples:
      ``dataset.max_tokens=1600000`` = 100 s of 16 kHz audio.
    * Bad files (unreadable, or shorter than ``min_sample_size`` once read):
      ``bad_audio="skip"`` logs one warning per file, counts it and yields
      ``None`` (dropped by :meth:`collater`); ``"fail"`` raises
      :class:`AudioReadError`. Counters live in the process that reads the
      audio (DataLoader workers keep their own copies).
    * Known-bad items (``known_bad``, dataset indices) are skipped without opening the file
      and still counted. The warning naming a bad file comes from the main process, once:
      a DataLoader worker only reports the ``(index, reason)`` with its batch (``bad_items``;
      fairseq's epoch iterator passes it to :meth:`remember_bad` in the main process as the
      batch leaves it, ``fairseq_patches.py``), so the workers forked afterwards skip the file
      too. Skipping instead of re-reading changes nothing but the time (a bad file yields the
      same empty sample either way): batches, counts and resume stay exact.

    * Batches carry ``num_bad_audio``, the number of bad clips dropped from them, so the
      task can count bad clips per epoch in the main process whatever the number of
      workers. ``source_dtype`` (float32; the tasks set float64 under bf16/fp16 so that
      fairseq's cast of the batch keeps the samples exact) is the dtype of ``source``.

    Subclasses add targets via :meth:`extra_item` / :meth:`collate_extra`.
    """

    source_dtype = torch.float32

    def __init__(self, manifest_path, sample_rate=16000, max_sample_size=None,
                 min_sample_size=MIN_SAMPLES_ONE_PATCH, crop="random", pad_to=None,
                 shuffle=True, bad_audio="skip", seed=1):
        super().__init__()
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {crop!r}")
        if bad_audio not in BAD_AUDIO_POLICIES:
            raise ValueError(f"bad_audio must be one of {BAD_AUDIO_POLICIES}, got {bad_audio!r}")
        for name, v in (("max_sample_size", max_sample_size), ("pad_to", pad_to)):
            if v is not None and int(v) < max(1, min_sample_size or 0):
                raise ValueError(f"{name}={v} must be >= min_sample_size={min_sample_size} (and >= 1)")
        if pad_to is not None and max_sample_size is not None and max_sample_size < pad_to:
            raise ValueError(f"max_sample_size={max_sample_size} < pad_to={pad_to}: set only pad_to")
        self.sample_rate = int(sample_rate)
        self.max_sample_size = None if max_sample_size is None else int(max_sample_size)
        self.min_sample_size = int(min_sample_size or 0)
        self.crop = crop
        self.pad_to = None if pad_to is None else int(pad_to)
        self.shuffle = shuffle
        self.bad_audio = bad_audio
        self.seed = int(seed)
        self.epoch = 1

        self.manifest = read_manifest(manifest_path)
        raw = self.manifest.sizes
        keep = raw >= self.min_sample_size
        self.kept_indices = np.flatnonzero(keep).astype(np.int64)
        self.skipped_indices = np.flatnonzero(~keep).astype(np.int64)
        if len(self.skipped_indices):
            names = [self.manifest.relpath(j) for j in self.skipped_indices[:5]]
            more = ", ..." if len(self.skipped_indices) > 5 else ""
            logger.warning("%s: dropped %d of %d entries shorter than min_sample_size=%d samples (%s%s)",
                           self.manifest.manifest_path, len(self.skipped_indices), len(raw),
                           self.min_sample_size, ", ".join(names), more)
        if len(self.kept_indices) == 0:
            raise ValueError(f"{self.manifest.manifest_path}: no entry has >= min_sample_size="
                             f"{self.min_sample_size} samples; lower min_sample_size or check the manifest")
        self.raw_sizes = raw[self.kept_indices]
        self.sizes = self._effective_sizes(self.raw_sizes)

        self.num_bad = 0
        self.bad_paths = []
        self.known_bad = set()
        self._new_bad = []  # (index, reason) found bad since the last collated batch (in this process)
        logger.info("loaded %d clips from %s (root %s)", len(self), self.manifest.manifest_path,
                    self.manifest.root)

    # ---------------------------------------------------------------- sizes
    def _crop_limit(self):
        return self.pad_to if self.pad_to is not None else self.max_sample_size

    def _effective_sizes(self, raw):
        if self.pad_to is not None:
            return np.full_like(raw, self.pad_to)
        if self.max_sample_size is not None:
            return np.minimum(raw, self.max_sample_size)
        return raw.copy()

    def __len__(self):
        return len(self.kept_indices)

    def num_tokens(self, index):
        return int(self.sizes[index])

    def num_tokens_vec(self, indices):
        return self.sizes[indices]

    def size(self, index):
        return int(self.sizes[index])

    def path(self, index):
        """Absolute path of dataset item ``index``."""
        return self.manifest.abspath(int(self.kept_indices[index]))

    def ordered_indices(self):
        """Random permutation (np.random, seeded by fairseq's numpy_seed), then
        stable-sorted by size, longest first."""
        order = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        order = order[np.argsort(self.sizes[order], kind="stable")]
        return order[::-1].copy()

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    # ---------------------------------------------------------------- items
    def _crop_offset(self, length, target, index):
        if self.crop == "start":
            return 0
        if self.crop == "center":
            return (length - target) // 2
        rng = np.random.RandomState((self.seed % 2**32, self.epoch % 2**32, int(index)))
        return int(rng.randint(0, length - target + 1))

    def _bad(self, index, path, reason, err=None):
        if self.bad_audio == "fail":
            raise AudioReadError(
                path, reason, "fix or remove the file, or set bad_audio='skip' to skip unreadable clips"
            ) from err
        self.num_bad += 1
        if self._probing:
            return None
        self._new_bad.append((int(index), reason))
        if torch.utils.data.get_worker_info() is None:  # a DataLoader worker only reports it with the batch
            self.remember_bad([(index, reason)])
        return None

    _probing = False

    @contextmanager
    def probe(self):
        """Reads that are not part of an epoch (fairseq's dummy batch): bad items are neither logged,
        counted, nor remembered (a relaunch restores ``known_bad`` only after fairseq took its dummy batch)."""
        state = (self.num_bad, getattr(self, "_pending_bad", 0), list(self._new_bad))
        self._probing = True
        try:
            yield self
        finally:
            self._probing = False
            self.num_bad, self._pending_bad, self._new_bad = state

    def remember_bad(self, items) -> None:
        """Add ``(index, reason)`` items found bad (here or in a DataLoader worker) to ``known_bad``,
        with one warning for each item not known before."""
        for index, reason in items:
            if int(index) not in self.known_bad:
                self.known_bad.add(int(index))
                self.bad_paths.append(self.path(index))
                logger.warning("skipping bad audio %s (item %d): %s", self.path(index), index, reason)

    def __getitem__(self, index):
        if index in self.known_bad:
            self.num_bad += 1
            return None
        path = self.path(index)
        try:
            wav = read_audio(path, self.sample_rate)
        except AudioReadError as e:
            return self._bad(index, path, e.reason, e)
        if wav.numel() < self.min_sample_size:
            return self._bad(index, path, f"only {wav.numel()} samples after reading at {self.sample_rate} "
                                          f"Hz, fewer than min_sample_size={self.min_sample_size}")
        target = self._crop_limit()
        if target is not None and wav.numel() > target:
            off = self._crop_offset(wav.numel(), target, index)
            wav = wav[off:off + target]
        item = {"id": index, "source": wav}
        item.update(self.extra_item(index))
        return item

    def extra_item(self, i):
        """Hook: extra fields merged into item ``i`` (e.g. labels). Default: {}."""
        return {}

    # ---------------------------------------------------------------- batches
    def collater(self, samples):
        """Zero-pad sources to the longest (or ``pad_to``). Returns ``{}`` if no
        valid sample is left; ``padding_mask`` is True on padded samples."""
        num_bad = len(samples)
        samples = [s for s in samples if s is not None and s.get("source") is not None]
        num_bad -= len(samples)
        if not samples:  # fairseq replaces an empty batch: count its clips with the next one
            self._pending_bad = getattr(self, "_pending_bad", 0) + num_bad
            return {}
        num_bad += getattr(self, "_pending_bad", 0)
        self._pending_bad = 0
        bad_items, self._new_bad = self._new_bad, []
        lengths = [s["source"].numel() for s in samples]
        target = self.pad_to if self.pad_to is not None else max(lengths)
        source = torch.zeros(len(samples), target, dtype=self.source_dtype)
        padding_mask = torch.ones(len(samples), target, dtype=torch.bool)
        for k, (s, n) in enumerate(zip(samples, lengths)):
            n = min(n, target)
            source[k, :n] = s["source"][:n]
            padding_mask[k, :n] = False
        batch = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "net_input": {"source": source, "padding_mask": padding_mask},
            "num_bad_audio": num_bad,  # bad clips dropped from this batch (and from empty ones before it)
            "bad_items": bad_items,  # (index, reason) of the newly found ones, for the main process
        }
        self.collate_extra(samples, batch)
        return batch

    def collate_extra(self, samples, batch):
        """Hook: add fields to ``batch`` (in place) from the kept ``samples``."""
        return None

    def bad_audio_report(self):
        """One-line summary of skipped bad files (this process only)."""
        if not self.known_bad:
            return f"{self.manifest.manifest_path}: no bad audio files seen"
        shown = ", ".join(self.bad_paths[:3]) + (", ..." if len(self.bad_paths) > 3 else "")
        return (f"{self.manifest.manifest_path}: {len(self.known_bad)} known bad file(s), skipped without "
                f"reading: {shown}")
