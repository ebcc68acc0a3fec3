"""The BEATs front end: Kaldi log-mel filterbank, normalisation, patches and padding masks.

This is the only fbank implementation in the project. It reproduces the official
``BEATs.preprocess`` (per clip ``torchaudio.compliance.kaldi.fbank(wav * 2**15,
num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10)``) as one
batched computation: the framing, DC removal, pre-emphasis, Povey window, 512-point
power spectrum and mel matrix are Kaldi's (the mel matrix comes from
``torchaudio.compliance.kaldi.get_mel_banks``), applied to a whole batch at once.
``tests/test_parity.py`` checks it against the per-clip torchaudio call and the oracle.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

from ..constants import SAMPLE_RATE

NUM_MEL_BINS = 128
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms at 16 kHz
FFT_SIZE = 512  # next power of two above FRAME_LENGTH (Kaldi round_to_power_of_two)
PREEMPHASIS = 0.97
WAVEFORM_SCALE = 2**15  # the official code feeds int16-range samples to Kaldi
FBANK_MEAN = 15.41663  # official AudioSet statistics (BEATs.extract_features defaults)
FBANK_STD = 6.55582

_mel_cache = {}


def _mel_matrix(device: torch.device) -> torch.Tensor:
    """(FFT_SIZE // 2 + 1, NUM_MEL_BINS) mel weights exactly as Kaldi builds them."""
    key = str(device)
    if key not in _mel_cache:
        banks, _ = kaldi.get_mel_banks(
            NUM_MEL_BINS, FFT_SIZE, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0
        )
        banks = F.pad(banks, (0, 1), value=0.0)  # Nyquist bin gets no weight, as in Kaldi
        _mel_cache[key] = banks.t().contiguous().to(device=device, dtype=torch.float32)
    return _mel_cache[key]


def _povey_window(device: torch.device) -> torch.Tensor:
    """Kaldi's "povey" window: a symmetric Hann window to the power 0.85."""
    key = "povey:" + str(device)
    if key not in _mel_cache:
        _mel_cache[key] = torch.hann_window(FRAME_LENGTH, periodic=False, device=device).pow(0.85)
    return _mel_cache[key]


def _frame_indices(num_samples, device: torch.device) -> torch.Tensor:
    """Sample indices ``(T, 400)`` of every frame: ``wav[:, idx]`` equals ``wav.unfold(1, 400, 160)``.

    Written with ``arange`` and a gather so that ONNX export keeps the length dynamic
    (the exporter cannot lower ``unfold`` over a dynamic axis).
    """
    count = (num_samples - FRAME_LENGTH) // FRAME_SHIFT + 1
    starts = torch.arange(count, device=device) * FRAME_SHIFT
    return starts[:, None] + torch.arange(FRAME_LENGTH, device=device)[None, :]


def num_frames(num_samples: int) -> int:
    """Frames Kaldi produces for a waveform of ``num_samples`` (snip_edges=True)."""
    if num_samples < FRAME_LENGTH:
        return 0
    return 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def compute_fbank(
    source: torch.Tensor,
    fbank_mean: float = FBANK_MEAN,
    fbank_std: float = FBANK_STD,
) -> torch.Tensor:
    """Waveforms ``(B, L)`` in [-1, 1] at 16 kHz -> normalised log-mel ``(B, T, 128)``.

    Always computed in float32 with autocast off (bf16/fp16 would change the labels), the FFT in float64.
    ``(fbank - fbank_mean) / (2 * fbank_std)``; pass ``fbank_mean=0, fbank_std=0.5``
    for the raw log-mel energies.
    """
    if source.dim() != 2:
        raise ValueError(f"compute_fbank expects a (batch, samples) waveform, got shape {tuple(source.shape)}")
    if source.size(1) < FRAME_LENGTH:
        raise ValueError(
            f"waveform of {source.size(1)} samples is shorter than one 25 ms frame ({FRAME_LENGTH} samples)"
        )
    with torch.autocast(device_type=source.device.type, enabled=False):
        wav = source.float() * WAVEFORM_SCALE
        frames = wav[:, _frame_indices(wav.size(1), wav.device)]  # (B, T, 400), snip_edges
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove_dc_offset
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - PREEMPHASIS * previous
        frames.mul_(_povey_window(wav.device))
        # The FFT in float64: float32 FFTs of different libraries (PyTorch, onnxruntime) differ by
        # their rounding, which the log turns into up to 1e-3 in a near-silent mel band; in float64
        # both agree to 1e-6 (fbank is 0.2 % of an update). zero-padded to 512 by rfft
        spectrum = torch.fft.rfft(frames.double(), n=FFT_SIZE, dim=-1)
        power = spectrum.abs().pow(2).float()
        mel = torch.matmul(power, _mel_matrix(wav.device))
        eps = torch.finfo(torch.float32).eps
        logmel = mel.clamp_min(eps).log()
        return (logmel - fbank_mean) / (2 * fbank_std)


def downsample_padding_mask(padding_mask: torch.Tensor, length: int) -> torch.Tensor:
    """The official ``forward_padding_mask`` rule, bit for bit.

    Trims ``size % length`` trailing columns, splits the rest into ``length`` equal
    chunks and marks an output position as padding only if its whole chunk is padding.
    Applied twice: samples -> fbank frames, then frames -> patches (which treats the
    time-major 2-D patches as consecutive frame chunks; an approximation the official
    code makes and that parity requires).
    """
    extra = padding_mask.size(1) % length
    if extra > 0:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.view(padding_mask.size(0), length, -1).all(-1)


def patchify(fbank: torch.Tensor, patch_size: int = 16) -> torch.Tensor:
    """``(B, T, F)`` -> ``(B, N, patch_size**2)`` in the encoder's time-major patch order.

    Patch ``n = t * (F // p) + f`` holds frames ``[t*p, (t+1)*p)`` and bins ``[f*p, (f+1)*p)``,
    flattened time-major inside the patch. Trailing ``T % p`` frames are dropped, as the
    strided patch convolution does.
    """
    batch, frames, bins = fbank.shape
    t, f = frames // patch_size, bins // patch_size
    x = fbank[:, : t * patch_size].reshape(batch, t, patch_size, f, patch_size)
    return x.permute(0, 1, 3, 2, 4).reshape(batch, t * f, patch_size * patch_size)


def patch_grid(num_frames_: int, num_bins: int = NUM_MEL_BINS, patch_size: int = 16):
    """(time patches, frequency patches) for an fbank of ``num_frames_`` frames."""
    return num_frames_ // patch_size, num_bins // patch_size


def reference_fbank(source: torch.Tensor, fbank_mean: float = FBANK_MEAN, fbank_std: float = FBANK_STD):
    """Per-clip ``torchaudio.compliance.kaldi.fbank`` exactly as the official code calls it.

    Slow (a Python loop); kept only so tests can check :func:`compute_fbank` against it.
    """
    out = [
        kaldi.fbank(
            wav.unsqueeze(0) * WAVEFORM_SCALE,
            num_mel_bins=NUM_MEL_BINS,
            sample_frequency=SAMPLE_RATE,
            frame_length=25,
            frame_shift=10,
        )
        for wav in source.float()
    ]
    return (torch.stack(out) - fbank_mean) / (2 * fbank_std)


def padding_masks(padding_mask: Optional[torch.Tensor], fbank: torch.Tensor, patch_size: int = 16):
    """Waveform mask ``(B, L)`` -> (frame mask ``(B, T)``, patch mask ``(B, N)``) for ``fbank``
    ``(B, T, F)`` and its patches, by :func:`downsample_padding_mask` twice; (None, None) without one."""
    if padding_mask is None:
        return None, None
    frame_mask = downsample_padding_mask(padding_mask, fbank.size(1))
    time_patches, freq_patches = patch_grid(fbank.size(1), fbank.size(2), patch_size)
    return frame_mask, downsample_padding_mask(frame_mask, time_patches * freq_patches)
