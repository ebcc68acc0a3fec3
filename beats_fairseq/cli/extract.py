"""beats-extract: clip- and patch-level BEATs features and tokenizer labels for a manifest.

Output folder (formats in docs/cli.md):

* ``clip_features.npy``  float32 ``(M, C)``: mean of each clip's patch features;
* ``patch_features.npy`` float32 ``(sum N_i, C)``: clip i's patches are rows
  ``patch_offsets[i]:patch_offsets[i+1]``, time-major (patch n = 8 * t + f for 16x16 patches);
* ``labels.npy``         int64 ``(sum N_i,)``: tokenizer labels, rows aligned with the patches (only when
  asked for: ``--outputs ...,labels`` or ``--tokenizer``);
* ``patch_offsets.npy``  int64 ``(M + 1,)``;
* with ``--frames``: ``frame_features.npy`` float32 ``(sum T_i, C)`` (one row per 160 ms time column:
  its 8 frequency patches averaged, or concatenated with ``--frame-reduce concat``),
  ``frame_timestamps.npy`` float64 ``(sum T_i,)`` (column centres in seconds, rows aligned with
  ``frame_features.npy``) and ``frame_offsets.npy`` int64 ``(M + 1,)``; long clips run in
  overlapping chunks (``--chunk-seconds``, ``--hop-seconds``; see ``beats_fairseq/features.py``);
* ``index.tsv``          one line per written clip: row, manifest entry, relpath, samples, offset, patches;
* ``info.json``          checkpoint, layer, sizes, skipped clips.

``N_i`` is the number of patches of clip i processed alone (complete 16-frame rows), so
the rows of a clip do not depend on the clips it was batched with.
"""

import argparse
import json
import logging
import os
import sys

from ..constants import REDUCTIONS
from .common import CliError, add_inference_args, run_main

logger = logging.getLogger("beats_fairseq.cli.extract")

OUTPUTS = ("clip", "patch", "labels", "frames")
FILES = ("clip_features.npy", "patch_features.npy", "labels.npy", "patch_offsets.npy", "frame_features.npy",
         "frame_timestamps.npy", "frame_offsets.npy", "index.tsv", "info.json")
_HEADER_BYTES = 128  # fixed .npy header size (a multiple of 64), rewritten once the row count is known


class NpyRowWriter:
    """Write a 2-D (or 1-D) ``.npy`` file row block by row block without holding it in memory."""

    def __init__(self, path: str, dtype, row_shape=()):
        import numpy as np

        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), tuple(row_shape), 0
        self.file = open(path, "wb")
        self.file.write(self._header())

    def _header(self) -> bytes:
        shape = (self.rows, *self.row_shape)
        text = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (self.dtype.str, shape)
        body = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

    def append(self, block) -> None:
        import numpy as np

        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {block.shape[1:]}, expected {self.row_shape}")
        self.file.write(block.tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(self._header())
        self.file.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-extract",
        description="Extract clip-level (mean over the clip's patches) and patch-level features from a chosen "
                    "encoder layer, and on request tokenizer labels, for every clip of a manifest. Any checkpoint "
                    "of this project or official BEATs checkpoint works; fine-tuned classifiers give their encoder "
                    "features. Reads no file but the checkpoint, the manifest's audio and --tokenizer. Outputs are "
                    ".npy files with an index (see docs/cli.md).",
    )
    parser.add_argument("checkpoint", help="model checkpoint (pre-trained, fine-tuned or tokenizer; fairseq or official)")
    parser.add_argument("manifest", help="fairseq .tsv manifest of the clips")
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--layer", type=int, default=None,
                        help="encoder layer whose output is written: 0-based, negative counts from the end "
                             "(-1 = last); default: the last layer, as the official extract_features")
    parser.add_argument("--outputs", default="auto",
                        help="comma-separated subset of clip,patch,labels; auto = clip,patch, plus labels when "
                             "--tokenizer is given (default: auto). labels: tokenizer labels of the patches, from "
                             "--tokenizer, else from the checkpoint itself when it is a tokenizer or an iter1 "
                             "pre-training checkpoint (its random projection)")
    parser.add_argument("--tokenizer",
                        help="tokenizer checkpoint whose labels are written (labels.npy); needed for labels of "
                             "iter2+ pre-training checkpoints, whose tokenizer is a separate file")
    parser.add_argument("--frames", action="store_true",
                        help="also write frame-level features: one row per 160 ms time column, with timestamps "
                             "(auto outputs become clip,frames; clip features are then the mean over the columns)")
    parser.add_argument("--frame-reduce", choices=REDUCTIONS, default="mean",
                        help="how a column's 8 frequency patches are combined (default: mean)")
    parser.add_argument("--chunk-seconds", type=float, default=10.0,
                        help="with --frames: clips longer than this run in overlapping chunks of this length on "
                             "the 160 ms column grid; 0 = whole clips in one pass (default: 10)")
    parser.add_argument("--hop-seconds", type=float, default=None,
                        help="with --frames: start of one chunk to the next (default: half a chunk)")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")
    add_inference_args(parser)
    return parser


def parse_outputs(value: str, tokenizer_given: bool, frames: bool = False):
    """The outputs asked for; labels only when listed, or with ``auto`` and ``--tokenizer``."""
    if value == "auto":
        return ["clip", "frames" if frames else "patch"] + (["labels"] if tokenizer_given else [])
    outputs = [v.strip() for v in value.split(",") if v.strip()] + (["frames"] if frames else [])
    outputs = list(dict.fromkeys(outputs))
    unknown = [v for v in outputs if v not in OUTPUTS]
    if unknown or not outputs:
        raise CliError(f"--outputs {value!r}: choose a comma-separated subset of {','.join(OUTPUTS)} (or auto)")
    if tokenizer_given and "labels" not in outputs:
        raise CliError(f"--tokenizer is only used for labels, which --outputs {value!r} leaves out: add labels")
    return outputs


def resolve_layer(layer, num_layers: int):
    if layer is None:
        return None
    if not -num_layers <= layer < num_layers:
        raise CliError(f"--layer {layer}: the encoder has {num_layers} layers (0..{num_layers - 1}, or negative)")
    return layer % num_layers


def find_labeller(model, kind, checkpoint, tokenizer_path, device):
    """Callable ``(source, padding_mask) -> (B, N) labels`` and its patch size: from ``tokenizer_path``,
    else from the checkpoint itself (a tokenizer, or an iter1 ``beats`` model's random projection).
    Never reads a file the user did not name."""
    from .inference import load_model, model_kind

    if tokenizer_path:
        tokenizer = load_model(tokenizer_path, device)
        if not hasattr(tokenizer, "extract_labels"):
            raise CliError(f"--tokenizer {tokenizer_path} is a {model_kind(tokenizer)} checkpoint, not a tokenizer")
        return tokenizer.extract_labels, tokenizer.backbone.patch_size
    if kind == "tokenizer":
        return model.extract_labels, model.backbone.patch_size
    if kind == "pretraining" and model.tokenizer is not None:  # iter1: the random projection, saved in the checkpoint
        return model.tokenizer.extract_labels, model.tokenizer.patch_size
    if kind == "pretraining" and model.cfg.tokenizer_path:
        raise CliError(f"{checkpoint} was pre-trained on the labels of the tokenizer {model.cfg.tokenizer_path}, which "
                       f"is not part of the checkpoint: pass --tokenizer {model.cfg.tokenizer_path} (or another "
                       "tokenizer checkpoint) for labels")
    raise CliError(f"{checkpoint} is a {kind} checkpoint without a tokenizer: pass --tokenizer TOKENIZER.pt for labels")


def prepare_out(folder: str, overwrite: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    existing = [f for f in FILES if os.path.exists(os.path.join(folder, f))]
    if existing and not overwrite:
        raise CliError(f"{folder} already holds {', '.join(existing)}: pass --overwrite or choose another --out")
    for name in existing:
        os.remove(os.path.join(folder, name))


def run(args) -> int:
    import numpy as np
    import torch

    from ..features import chunk_grid, frame_features
    from .inference import BatchReader, clips_from_manifest, load_model, model_kind, num_patches, resolve_device

    device = resolve_device(args.device)
    clips = clips_from_manifest(args.manifest)
    model = load_model(args.checkpoint, device)
    kind = model_kind(model)
    backbone = model.backbone
    outputs = parse_outputs(args.outputs, bool(args.tokenizer), args.frames)
    labeller, label_patch = None, None
    if "labels" in outputs:
        labeller, label_patch = find_labeller(model, kind, args.checkpoint, args.tokenizer, device)
        if label_patch != backbone.patch_size:
            raise CliError(f"the tokenizer uses {label_patch}x{label_patch} patches but the model "
                           f"{backbone.patch_size}x{backbone.patch_size}: their rows would not align")
    chunk_seconds = args.chunk_seconds or None
    try:
        chunk_grid(chunk_seconds, args.hop_seconds, backbone.patch_size)
    except ValueError as exc:
        raise CliError(f"--chunk-seconds {args.chunk_seconds} / --hop-seconds {args.hop_seconds}: {exc}") from None
    layer = resolve_layer(args.layer, backbone.cfg.encoder_layers)
    frames = "frames" in outputs
    need_patches = "patch" in outputs or ("clip" in outputs and not frames)
    prepare_out(args.out, args.overwrite)

    dim = backbone.cfg.encoder_embed_dim
    writers = {}
    if "clip" in outputs:
        writers["clip"] = NpyRowWriter(os.path.join(args.out, "clip_features.npy"), np.float32, (dim,))
    if "patch" in outputs:
        writers["patch"] = NpyRowWriter(os.path.join(args.out, "patch_features.npy"), np.float32, (dim,))
    if "labels" in outputs:
        writers["labels"] = NpyRowWriter(os.path.join(args.out, "labels.npy"), np.int64)
    if frames:
        width = dim * (128 // backbone.patch_size if args.frame_reduce == "concat" else 1)
        writers["frames"] = NpyRowWriter(os.path.join(args.out, "frame_features.npy"), np.float32, (width,))
        writers["timestamps"] = NpyRowWriter(os.path.join(args.out, "frame_timestamps.npy"), np.float64)
    offsets, frame_offsets = [0], [0]
    index_lines = ["row\tentry\tpath\tnum_samples\tpatch_offset\tnum_patches"
                   + ("\tframe_offset\tnum_frames" if frames else "")]

    reader = BatchReader(clips, args, device, desc="extract")
    try:
        with torch.inference_mode():
            for batch in reader:
                feats = labels = columns = None
                if need_patches:
                    feats, _ = backbone.extract_features(batch.source, batch.padding_mask, layer=layer)
                    feats = feats.float().cpu().numpy()
                if frames:
                    columns = frame_features(backbone, batch.source, batch.padding_mask, layer=layer,
                                             reduce=args.frame_reduce, chunk_seconds=chunk_seconds,
                                             hop_seconds=args.hop_seconds)
                    column_feats = columns.features.float().cpu().numpy()
                    stamps = columns.timestamps.numpy()
                if "labels" in outputs:
                    labels = labeller(batch.source, batch.padding_mask).reshape(len(batch.lengths), -1).cpu().numpy()
                for row, (pos, length) in enumerate(zip(batch.positions, batch.lengths)):
                    n = num_patches(length, backbone.patch_size)
                    t = n // (128 // backbone.patch_size)
                    if feats is not None:
                        if "clip" in writers and not frames:
                            writers["clip"].append(feats[row, :n].mean(axis=0, keepdims=True))
                        if "patch" in writers:
                            writers["patch"].append(feats[row, :n])
                    if columns is not None:
                        if "clip" in writers:
                            clip_feats = column_feats[row, :t].reshape(t, -1, dim).mean(axis=(0, 1))
                            writers["clip"].append(clip_feats[None])
                        writers["frames"].append(column_feats[row, :t])
                        writers["timestamps"].append(stamps[:t])
                    if labels is not None:
                        writers["labels"].append(labels[row, :n])
                    clip = clips[pos]
                    line = f"{len(offsets) - 1}\t{clip.entry}\t{clip.key}\t{length}\t{offsets[-1]}\t{n}"
                    if frames:
                        line += f"\t{frame_offsets[-1]}\t{t}"
                        frame_offsets.append(frame_offsets[-1] + t)
                    index_lines.append(line)
                    offsets.append(offsets[-1] + n)
    finally:
        for writer in writers.values():
            writer.close()
    reader.report()

    np.save(os.path.join(args.out, "patch_offsets.npy"), np.asarray(offsets, dtype=np.int64))
    if frames:
        np.save(os.path.join(args.out, "frame_offsets.npy"), np.asarray(frame_offsets, dtype=np.int64))
    with open(os.path.join(args.out, "index.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(index_lines) + "\n")
    info = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "model_kind": kind,
        "manifest": os.path.abspath(args.manifest),
        "layer": "last" if layer is None else layer,
        "num_layers": backbone.cfg.encoder_layers,
        "feature_dim": dim,
        "patch_size": backbone.patch_size,
        "freq_patches": 128 // backbone.patch_size,
        "outputs": outputs,
        "tokenizer": os.path.abspath(args.tokenizer) if args.tokenizer else None,
        "num_clips": len(offsets) - 1,
        "num_patches": offsets[-1],
        "max_seconds": args.max_seconds,
        "frames": {"reduce": args.frame_reduce, "hop_seconds": 0.01 * backbone.patch_size,
                   "chunk_seconds": chunk_seconds, "chunk_hop_seconds": args.hop_seconds} if frames else None,
        "skipped": [{"entry": c.entry, "path": c.key, "error": e} for c, e in reader.skipped],
    }
    with open(os.path.join(args.out, "info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    logger.info("wrote %s for %d clips (%d patches) to %s", ", ".join(outputs), len(offsets) - 1, offsets[-1], args.out)
    return 0


def main(argv=None) -> int:
    return run_main("beats-extract", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
