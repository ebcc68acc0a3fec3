"""The manifest writer of ``beats-manifest``: finds and probes audio, optionally writes 16 kHz
copies, and writes split manifests and label files (used by every subcommand)."""

import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..constants import SAMPLE_RATE
from .common import CliError

logger = logging.getLogger("beats_fairseq.cli.manifest")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".snd", ".caf")


@dataclass
class Item:
    path: str  # absolute path of the source audio file
    labels: List[int] = field(default_factory=list)


def find_audio(folder: str) -> List[str]:
    """Audio files under ``folder`` (recursive, sorted, hidden entries skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files)
                     if not f.startswith(".") and f.lower().endswith(AUDIO_EXTENSIONS))
    return found


def resampled_length(frames: int, sample_rate: int) -> int:
    """Samples after resampling to 16 kHz (= ``torchaudio.functional.resample``'s output length)."""
    if sample_rate == SAMPLE_RATE:
        return frames
    return -(-frames * SAMPLE_RATE // sample_rate)


class ManifestWriter:
    """Probes audio, optionally writes 16 kHz copies, and writes split manifests + label files."""

    def __init__(self, args, audio_root: str):
        self.out = os.path.abspath(args.out)
        self.audio_root = os.path.abspath(audio_root)
        self.resample_dir = os.path.abspath(args.resample_dir) if args.resample_dir else None
        self.relative_root = args.relative_root
        self.skip_bad = args.skip_bad
        self.progress = not args.no_progress
        self.cache: Dict[str, Optional[int]] = {}
        self.skipped: Dict[str, str] = {}
        self.copies: Dict[str, str] = {}  # 16 kHz copy -> source file
        self.converted = 0  # files that are not 16 kHz mono
        os.makedirs(self.out, exist_ok=True)

    def relpath(self, path: str) -> str:
        rel = os.path.relpath(path, self.audio_root)
        if rel.startswith(".."):
            raise CliError(f"{path} is outside the audio root {self.audio_root}")
        return rel

    def _bad(self, path: str, reason: str) -> None:
        message = f"cannot use audio file '{path}': {reason}"
        if not self.skip_bad:
            raise CliError(f"{message} (or pass --skip-bad to leave such files out)")
        logger.warning("skipping: %s", message)
        self.skipped[path] = reason

    def prepare(self, path: str) -> Optional[int]:
        """16 kHz length of ``path`` (writing its copy if asked), or None for a skipped file."""
        import soundfile as sf

        if path in self.cache:
            return self.cache[path]
        length = None
        try:
            info = sf.info(path)
        except Exception as exc:  # soundfile raises several types
            self._bad(path, f"soundfile could not open it ({type(exc).__name__}: {exc})")
        else:
            if info.frames <= 0:
                self._bad(path, "no samples")
            else:
                native = info.samplerate == SAMPLE_RATE and info.channels == 1
                self.converted += not native
                length = resampled_length(info.frames, info.samplerate)
                if self.resample_dir:
                    length = self._copy(path, native and path.lower().endswith(".wav"))
        self.cache[path] = length
        return length

    def copy_path(self, path: str) -> str:
        return os.path.join(self.resample_dir, os.path.splitext(self.relpath(path))[0] + ".wav")

    def _copy(self, path: str, byte_copy: bool) -> Optional[int]:
        import numpy as np
        import soundfile as sf

        from ..data.audio import AudioReadError, read_audio

        dst = self.copy_path(path)
        other = self.copies.setdefault(dst, path)
        if other != path:
            raise CliError(f"{path} and {other} would both be copied to {dst}: rename one of them")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if byte_copy:
            shutil.copyfile(path, dst)
            return sf.info(dst).frames
        try:
            wav = read_audio(path, SAMPLE_RATE).numpy()
        except AudioReadError as exc:
            self._bad(path, exc.reason)
            return None
        sf.write(dst, np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
        return len(wav)

    def write_split(self, name: str, items: List[Item], multilabel: bool = False, folder: str = "") -> int:
        """Write ``{folder}/{name}.tsv`` and ``.lbl`` (``.mlbl`` if ``multilabel``); returns the clip count."""
        from tqdm import tqdm

        from ..data.manifest import write_manifest

        rows, label_lines = [], []
        for item in tqdm(items, desc=f"{folder + '/' if folder else ''}{name}", unit="file",
                         disable=not self.progress, file=sys.stderr, dynamic_ncols=True):
            length = self.prepare(item.path)
            if length is None:
                continue
            if self.resample_dir:
                rel = os.path.relpath(self.copy_path(item.path), self.resample_dir)
            else:
                rel = self.relpath(item.path)
            rows.append((rel, length))
            label_lines.append(",".join(str(c) for c in item.labels))
        target = os.path.join(self.out, folder)
        root = self.resample_dir or self.audio_root
        if self.relative_root:
            root = os.path.relpath(root, target)
        write_manifest(os.path.join(target, f"{name}.tsv"), root, rows)
        with open(os.path.join(target, f"{name}.{'mlbl' if multilabel else 'lbl'}"), "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in label_lines))
        logger.info("%s: %d clips", os.path.join(target, f"{name}.tsv"), len(rows))
        return len(rows)

    def write_class_map(self, names, mids, folder: str = "") -> None:
        from ..data.manifest import write_class_map

        write_class_map(os.path.join(self.out, folder, "labels.csv"), names, mids)

    def finish(self) -> None:
        if self.converted and not self.resample_dir:
            logger.info("%d files are not 16 kHz mono: they are resampled / downmixed when read "
                        "(num_samples is the 16 kHz length); --resample-dir writes 16 kHz copies once", self.converted)
        elif self.converted:
            logger.info("wrote 16 kHz mono copies under %s (%d converted)", self.resample_dir, self.converted)
        if self.skipped:
            path = os.path.join(self.out, "skipped.tsv")
            with open(path, "w", encoding="utf-8") as f:
                f.write("".join(f"{p}\t{r}\n" for p, r in sorted(self.skipped.items())))
            logger.warning("skipped %d unusable audio files (listed in %s)", len(self.skipped), path)
