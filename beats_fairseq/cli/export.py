"""beats-export: a BEATs checkpoint -> one ONNX file with the Kaldi fbank inside the graph.

Input ``waveform`` ``(batch, samples)`` float32 at 16 kHz; outputs ``features``
``(batch, patches, dim)``, plus ``probabilities`` for fine-tuned classifiers and ``labels``
for tokenizers (see ``beats_fairseq/export.py``). Then, with onnxruntime installed, the file
is run on test audio and compared with PyTorch.
"""

import argparse
import logging
import os
import sys

from .common import CliError, run_main

logger = logging.getLogger("beats_fairseq.cli.export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-export",
        description="Export a BEATs checkpoint (pre-trained, fine-tuned or tokenizer; fairseq or official) to ONNX "
                    "(opset 18). Input 'waveform' (batch, samples) float32 16 kHz; output 'features' (batch, "
                    "patches, dim), plus 'probabilities' (classifiers) or 'labels' (tokenizers). Batch and length "
                    "are dynamic; all rows of a batch are taken as unpadded audio. The export is then checked "
                    "against PyTorch with onnxruntime.",
    )
    parser.add_argument("checkpoint", help="model checkpoint")
    parser.add_argument("out", help="ONNX file to write")
    parser.add_argument("--layer", type=int, default=None,
                        help="encoder layer (0-based, negative from the end) whose output is 'features'; "
                             "default: the last")
    parser.add_argument("--check-audio", nargs="*", default=None, metavar="FILE",
                        help="audio files to compare onnxruntime and PyTorch on, one at a time (default: two "
                             "synthetic batches of 2 x 3 s and 1 x 7.3 s)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest accepted absolute difference of features/probabilities (default: 1e-4)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return parser


def check_waveforms(files):
    from ..data.audio import read_audio
    from ..export import example_waveform

    if not files:
        return [example_waveform(2, 3.0, seed=1), example_waveform(1, 7.3, seed=2)]
    return [read_audio(f, 16000).unsqueeze(0) for f in files]


def run(args) -> int:
    if os.path.exists(args.out) and not args.overwrite:
        raise CliError(f"{args.out} exists: pass --overwrite or choose another path")
    import torch

    from ..export import OPSET, compare_onnxruntime, export_onnx
    from .inference import load_model, model_kind

    model = load_model(args.checkpoint, "cpu")
    layers = model.backbone.cfg.encoder_layers
    layer = args.layer
    if layer is not None:
        if not -layers <= layer < layers:
            raise CliError(f"--layer {layer}: the encoder has {layers} layers (0..{layers - 1}, or negative)")
        layer %= layers
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    logger.info("exporting %s model %s (opset %d)", model_kind(model), args.checkpoint, OPSET)
    try:
        names = export_onnx(model, args.out, layer=layer)
    except ImportError as exc:
        raise CliError(str(exc)) from None
    logger.info("wrote %s (%.1f MB): input waveform, outputs %s", args.out, os.path.getsize(args.out) / 2**20,
                ", ".join(names))
    if args.no_check:
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.warning("onnxruntime is not installed: the export was not checked (pip install onnxruntime)")
        return 0
    with torch.no_grad():
        worst = compare_onnxruntime(model, args.out, check_waveforms(args.check_audio), layer)
    logger.info("onnxruntime vs PyTorch: %s", ", ".join(
        f"{k} {'share of differing labels' if k == 'labels' else 'max abs diff'} {v:.3g}" for k, v in worst.items()))
    bad = {k: v for k, v in worst.items() if k != "labels" and v > args.atol}
    if bad:
        raise CliError(f"{args.out}: onnxruntime differs from PyTorch by more than --atol {args.atol}: {bad}")
    return 0


def main(argv=None) -> int:
    return run_main("beats-export", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
