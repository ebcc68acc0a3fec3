"""beats-predict: top-k classes of audio clips with a fine-tuned BEATs classifier.

Works with this project's ``beats_classifier`` checkpoints and with official fine-tuned
BEATs checkpoints (class names from their ``label_dict``, or display names from an
AudioSet-style ``--class-map`` csv matched by MID).

    beats-predict CHECKPOINT clip1.wav clip2.flac [--top-k 5]
    beats-predict CHECKPOINT --manifest test.tsv --output predictions.tsv
"""

import argparse
import csv
import logging
import sys

from .common import CliError, add_inference_args, run_main

logger = logging.getLogger("beats_fairseq.cli.predict")

OUTPUT_COLUMNS = ("path", "rank", "index", "mid", "display_name", "score")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-predict",
        description="Print the top-k classes (display name and score) of audio clips with a fine-tuned BEATs "
                    "classifier: this project's beats_classifier checkpoints or official fine-tuned checkpoints. "
                    "Scores are the model's probabilities (sigmoid for multi-label models, softmax otherwise).",
    )
    parser.add_argument("checkpoint", help="fine-tuned checkpoint (fairseq beats_classifier or official BEATs)")
    parser.add_argument("audio", nargs="*", help="audio files to classify (any rate / channel count soundfile reads)")
    parser.add_argument("--manifest", help="fairseq .tsv manifest of clips to classify (instead of, or besides, files)")
    parser.add_argument("--top-k", type=int, default=5, help="number of classes printed per clip (default: 5)")
    parser.add_argument("--class-map",
                        help="index,mid,display_name csv (e.g. AudioSet class_labels_indices.csv) for display names; "
                             "matched by MID when the checkpoint has an official label_dict, else by index")
    parser.add_argument("--output", help="also write all top-k rows to this tsv file (columns: "
                                         + ", ".join(OUTPUT_COLUMNS) + ")")
    add_inference_args(parser)
    return parser


def format_clip(key: str, rows) -> str:
    lines = [key]
    for rank, index, mid, name, score in rows:
        tag = f"  [{mid}]" if mid and mid != name else ""
        lines.append(f"  {rank:>2}. {score:.4f}  {name}{tag}  (#{index})")
    return "\n".join(lines)


def run(args) -> int:
    if not args.audio and not args.manifest:
        raise CliError("give audio files and/or --manifest")
    if args.top_k <= 0:
        raise CliError(f"--top-k must be > 0, got {args.top_k}")
    import torch

    from .inference import (BatchReader, class_table, clips_from_files, clips_from_manifest, load_model, model_kind,
                            resolve_device)

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device)
    kind = model_kind(model)
    if kind != "classifier":
        raise CliError(f"{args.checkpoint} is a {kind} checkpoint, not a fine-tuned classifier: "
                       "use beats-extract for features / tokenizer labels")
    mids, names = class_table(model, args.class_map)
    clips = clips_from_files(args.audio) + (clips_from_manifest(args.manifest) if args.manifest else [])
    top_k = min(args.top_k, len(names))

    reader = BatchReader(clips, args, device, desc="predict")
    out_rows = []
    with torch.inference_mode():
        for batch in reader:
            probs, _ = model.extract_features(batch.source, batch.padding_mask)
            scores, indices = probs.float().topk(top_k, dim=-1)
            for row, pos in enumerate(batch.positions):
                key = clips[pos].key
                rows = [
                    (rank + 1, int(i), mids[int(i)], names[int(i)], float(s))
                    for rank, (s, i) in enumerate(zip(scores[row].tolist(), indices[row].tolist()))
                ]
                print(format_clip(key, rows), flush=True)
                out_rows.extend((key, *r) for r in rows)
    reader.report()
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(OUTPUT_COLUMNS)
            for key, rank, index, mid, name, score in out_rows:
                writer.writerow([key, rank, index, mid, name, repr(score)])
        logger.info("wrote %d rows to %s", len(out_rows), args.output)
    return 0


def main(argv=None) -> int:
    return run_main("beats-predict", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
