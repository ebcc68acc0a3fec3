"""ONNX export of BEATs models, Kaldi fbank included.

The graph takes ``waveform`` ``(batch, samples)`` float32 at 16 kHz in [-1, 1] and runs the
project's one fbank (``modules/fbank.py``: framing by a gather, Povey window, ``rfft``
as an ONNX ``DFT``, the Kaldi mel matrix, log floor), the patch embedding and the encoder.
Outputs: ``features`` ``(batch, patches, dim)`` (time-major, patch ``n = 8 t + f``) from
every model; fine-tuned classifiers add ``probabilities`` ``(batch, classes)``, tokenizers
``labels`` ``(batch, patches)`` int64. Batch and length are dynamic (at least 2800 samples,
one column of patches).

All rows of a batch are taken as valid audio: there is no padding-mask input, so batch
clips of equal length (or run them one at a time) to get what ``extract_features`` gives
each clip alone. The exported model is the inference path only: no dropout, LayerDrop,
SpecAugment or training losses; weight normalisation of the positional convolution is
folded into a plain convolution weight.

Exported with ``torch.onnx.export(dynamo=True)`` at opset 18 (``DFT`` needs 17).
"""

import copy
import logging
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .loading import model_kind
from .modules.encoder import WeightNormConv1d
from .modules.fbank import FRAME_LENGTH, FRAME_SHIFT, SAMPLE_RATE
from .modules.pooling import head_logits

logger = logging.getLogger(__name__)

OPSET = 18
MIN_SAMPLES = 15 * FRAME_SHIFT + FRAME_LENGTH  # one column of 16 frames


class FoldedConv1d(nn.Module):
    """A :class:`WeightNormConv1d` with its weight ``g * v / ||v||`` computed once."""

    def __init__(self, conv: WeightNormConv1d):
        super().__init__()
        self.weight = nn.Parameter(conv.normalised_weight().detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.padding, self.groups = conv.padding, conv.groups

    def forward(self, x):
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)


class OnnxModel(nn.Module):
    """The inference graph of one model: waveform -> features (+ probabilities / labels)."""

    def __init__(self, model, layer: Optional[int] = None):
        super().__init__()
        self.kind = model_kind(model)
        model = copy.deepcopy(model).float().eval()
        backbone = model.backbone
        encoder = backbone.encoder
        encoder.pos_conv[0] = FoldedConv1d(encoder.pos_conv[0])
        encoder.gradient_decay = 1.0  # identity in the forward pass
        self.backbone = backbone
        self.layer = layer
        if self.kind == "classifier":
            self.head, self.multilabel = model.head, model.cfg.multilabel
            self.head_pooling, self.bands = model.cfg.head_pooling, backbone.frequency_bands
        if self.kind == "tokenizer":
            self.quantize_layer, self.quantize = model.quantize_layer, model.quantize

    @property
    def output_names(self) -> List[str]:
        return ["features"] + {"classifier": ["probabilities"], "tokenizer": ["labels"]}.get(self.kind, [])

    def forward(self, waveform):
        backbone = self.backbone
        front = backbone.frontend(waveform)
        heads = self.kind in ("classifier", "tokenizer")  # these read the last layer
        last, layers = backbone.encode(front.embeddings, layer=None if heads else self.layer)
        features = last if self.layer is None else layers[self.layer]
        if self.kind == "classifier":
            logits = head_logits(self.head, last, None, self.head_pooling, self.bands)
            probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)
            return features, probs
        if self.kind == "tokenizer":
            z = F.normalize(self.quantize_layer(last), p=2.0, dim=-1)
            labels = self.quantize.assign(z.reshape(-1, z.size(-1)))
            return features, labels.view(z.shape[:-1])
        return features


def example_waveform(batch: int = 2, seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Tones plus noise at a moderate level: a stand-in input for export and checks."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rows = []
    for _ in range(batch):
        freqs = 100 + 3000 * torch.rand(3, 1, generator=generator)
        tone = torch.sin(2 * torch.pi * freqs * t).sum(0) / 3
        rows.append(0.3 * tone + 0.05 * torch.randn(t.shape, generator=generator))
    return torch.stack(rows)


EXPORT_MIN_TORCH = (2, 11)


def check_export_torch(version: str = torch.__version__) -> None:
    """The dynamic-length export needs torch >= 2.11: torch.export of 2.8 to 2.10 fails to prove the
    symbolic patch-grid sizes (a ``ConstraintViolationError`` on ``samples``)."""
    major, minor = (int(part) for part in version.split("+")[0].split(".")[:2])
    if (major, minor) < EXPORT_MIN_TORCH:
        raise RuntimeError(f"ONNX export needs torch >= {'.'.join(map(str, EXPORT_MIN_TORCH))} (this is torch "
                           f"{version}); everything else works with torch >= 2.8: pip install 'torch>=2.11' "
                           "'torchaudio>=2.11' to export")


def export_onnx(model, path: str, layer: Optional[int] = None, opset: int = OPSET) -> List[str]:
    """Write ``model`` (anything ``beats_fairseq.load`` returns) to ``path``; returns the output names."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"ONNX export needs onnx and onnxscript ({exc}): pip install onnx onnxscript onnxruntime, "
                          "or pip install -e '.[onnx]' in the repository") from None
    check_export_torch()
    wrapper = OnnxModel(model, layer).eval()
    example = example_waveform()
    with torch.no_grad():
        wrapper(example)  # builds the fbank constants (window, mel matrix) outside the trace
        batch = torch.export.Dim("batch", min=1)
        samples = torch.export.Dim("samples", min=MIN_SAMPLES)
        for name in ("onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.WARNING)
        program = torch.onnx.export(
            wrapper, (example,), input_names=["waveform"], output_names=wrapper.output_names,
            dynamic_shapes={"waveform": {0: batch, 1: samples}}, opset_version=opset, dynamo=True,
            verbose=False, optimize=True,
        )
    program.save(path, external_data=False)
    return wrapper.output_names


def reference_output(model, name: str, waveform, layer: Optional[int] = None) -> torch.Tensor:
    """What the PyTorch model gives for the ONNX output ``name`` (its own API, unmodified)."""
    if name == "features":
        return model.backbone.extract_features(waveform, layer=layer)[0]
    if name == "probabilities":
        return model.extract_features(waveform)[0]
    if name == "labels":
        return model.extract_labels(waveform)
    raise ValueError(f"unknown output {name!r}")


def compare_onnxruntime(model, path: str, waveforms, layer: Optional[int] = None):
    """Max absolute difference per output between onnxruntime on ``path`` and PyTorch, over ``waveforms``
    (a list of ``(B, L)`` tensors); labels give the share of differing labels instead."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    worst = {}
    for wav in waveforms:
        wav = wav.float()
        with torch.no_grad():
            ref = [reference_output(model, name, wav, layer) for name in names]
        got = session.run(None, {"waveform": wav.numpy()})
        for name, r, g in zip(names, ref, got):
            if tuple(r.shape) != tuple(g.shape):
                raise RuntimeError(f"{path}: output {name} has shape {g.shape}, PyTorch gives {tuple(r.shape)}")
            r = r.numpy()
            diff = float((r != g).mean()) if name == "labels" else float(abs(r - g).max())
            worst[name] = max(worst.get(name, 0.0), diff)
    return worst
