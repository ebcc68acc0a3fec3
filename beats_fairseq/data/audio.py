"""Reading audio files into 16 kHz mono float32 waveforms (soundfile based).

``torchaudio.load`` needs torchcodec, which we do not depend on, so all file
I/O goes through :mod:`soundfile` (wav, flac, ogg, mp3, ... as supported by
libsndfile). Resampling uses :func:`torchaudio.functional.resample`.
"""

import os

import numpy as np
import soundfile as sf
import torch

from ..constants import MIN_SAMPLES_ONE_PATCH  # noqa: F401  (importable from here too)
from ..errors import AudioReadError


def read_audio(path, target_sample_rate=16000):
    """Read ``path`` and return a mono float32 tensor of shape ``(L,)``.

    Behaviour:
      * samples are decoded by soundfile as float32 (integer PCM maps to [-1, 1));
      * multi-channel audio is downmixed by averaging the channels;
      * a sample rate other than ``target_sample_rate`` is resampled with
        ``torchaudio.functional.resample`` (so ``L`` is the length *after*
        resampling, which may differ from a manifest's ``num_samples``);
      * a missing, unreadable or corrupt file, a file with zero samples, or a
        file containing NaN/inf samples raises :class:`AudioReadError` naming
        the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        reason = "is a directory, not a file" if os.path.isdir(path) else "file not found"
        raise AudioReadError(path, reason)
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types (LibsndfileError, RuntimeError, ...)
        raise AudioReadError(path, f"soundfile could not decode it ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise AudioReadError(path, "the file is empty (0 samples)")
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        bad = int((~np.isfinite(wav)).sum())
        raise AudioReadError(path, f"{bad} non-finite (NaN/inf) samples")
    wav = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    if sr != target_sample_rate:
        import torchaudio.functional as AF

        wav = AF.resample(wav, int(sr), int(target_sample_rate))
        if wav.numel() == 0:
            raise AudioReadError(path, f"no samples left after resampling {sr} Hz -> {target_sample_rate} Hz")
    return wav
