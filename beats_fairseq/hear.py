"""The HEAR API (hear-eval-kit, HEAR 2021) for BEATs models.

    import beats_fairseq.hear as hear
    model = hear.load_model("BEATs_iter3_plus_AS2M.pt")            # any checkpoint beats_fairseq.load reads
    emb, ts = hear.get_timestamp_embeddings(audio, model)         # audio (n, samples) at 16 kHz
    scene = hear.get_scene_embeddings(audio, model)               # (n, D)

Timestamp embeddings are the per-column features of :mod:`beats_fairseq.features`: one
vector every 160 ms (a time column of 16 fbank frames), the mean of its 8 frequency
patches (``reduce="concat"``: their concatenation, 8 x wider), stamped at the column
centre ``87.5 + 160 t`` ms. Audio longer than ``chunk_seconds`` (10 s) runs in overlapping
chunks on the column grid, so the timestamps stay exact and memory stays bounded. Scene
embeddings are the mean of the timestamp embeddings (for ``reduce="mean"``: the mean of
every patch feature, the usual BEATs clip embedding). Audio shorter than one column
(2800 samples, 0.175 s) is zero-padded to one column.

hear-eval-kit passes ``--model-options '{"layer": 8}'`` to :func:`load_model` as keyword
arguments.
"""

from typing import Optional

import torch
import torch.nn as nn

from .features import REDUCTIONS, chunk_grid, frame_features
from .loading import load
from .modules.fbank import FRAME_LENGTH, FRAME_SHIFT, NUM_MEL_BINS, SAMPLE_RATE


class BeatsHearModel(nn.Module):
    """A loaded BEATs model plus the HEAR attributes and the feature settings."""

    sample_rate = SAMPLE_RATE

    def __init__(self, model: nn.Module, layer: Optional[int] = None, reduce: str = "mean",
                 chunk_seconds: float = 10.0, hop_seconds: Optional[float] = None):
        super().__init__()
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce={reduce!r}: choose one of {', '.join(REDUCTIONS)}")
        self.model = model.eval()
        backbone = model.backbone
        layers = backbone.cfg.encoder_layers
        if layer is not None and not -layers <= layer < layers:
            raise ValueError(f"layer={layer}: the encoder has {layers} layers (0..{layers - 1}, or negative)")
        self.layer = None if layer is None else layer % layers
        chunk_grid(chunk_seconds, hop_seconds, backbone.patch_size)  # fails now on bad values
        self.reduce, self.chunk_seconds, self.hop_seconds = reduce, chunk_seconds, hop_seconds
        self.min_samples = (backbone.patch_size - 1) * FRAME_SHIFT + FRAME_LENGTH
        width = backbone.cfg.encoder_embed_dim * (NUM_MEL_BINS // backbone.patch_size if reduce == "concat" else 1)
        self.scene_embedding_size = int(width)
        self.timestamp_embedding_size = int(width)


def load_model(model_file_path: str = "", layer: Optional[int] = None, reduce: str = "mean",
               chunk_seconds: float = 10.0, hop_seconds: Optional[float] = None) -> BeatsHearModel:
    """A checkpoint of this project or an official BEATs checkpoint -> :class:`BeatsHearModel` (on CPU).

    ``layer``: 0-based encoder layer (negative counts from the end; default the last).
    """
    if not model_file_path:
        raise ValueError("beats_fairseq.hear.load_model needs a checkpoint path (hear-eval-kit: --model CKPT)")
    return BeatsHearModel(load(model_file_path), layer, reduce, chunk_seconds, hop_seconds)


def get_timestamp_embeddings(audio: torch.Tensor, model: BeatsHearModel):
    """``audio (n, samples)`` -> (embeddings ``(n, T, D)`` float32, timestamps ``(n, T)`` float32 in ms)."""
    if audio.dim() != 2:
        raise ValueError(f"audio must have shape (n_sounds, samples), got {tuple(audio.shape)}")
    if audio.size(1) < model.min_samples:
        audio = torch.nn.functional.pad(audio, (0, model.min_samples - audio.size(1)))
    with torch.no_grad():
        out = frame_features(model.model, audio.float(), layer=model.layer, reduce=model.reduce,
                             chunk_seconds=model.chunk_seconds, hop_seconds=model.hop_seconds)
    embeddings = out.features.float()
    timestamps = (out.timestamps * 1000.0).float().to(embeddings.device)
    return embeddings, timestamps.unsqueeze(0).expand(audio.size(0), -1).contiguous()


def get_scene_embeddings(audio: torch.Tensor, model: BeatsHearModel) -> torch.Tensor:
    """``audio (n, samples)`` -> ``(n, D)`` float32: the mean of the timestamp embeddings."""
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return embeddings.mean(dim=1)
