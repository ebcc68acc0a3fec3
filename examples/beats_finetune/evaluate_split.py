"""Evaluate a fine-tuned ``beats_classifier`` checkpoint on one split (accuracy and mAP).

The checkpoint is reloaded with ``fairseq.checkpoint_utils.load_model_ensemble_and_task``
(self-contained: the pre-trained file is not needed); the split is read with the task's
own dataset code (``{split}.tsv`` + ``{split}.{label_ext}`` in ``--data``). Prints one JSON
line: ``{"tag", "checkpoint", "split", "clips", "accuracy", "mAP"}``.

    python examples/beats_finetune/evaluate_split.py runs/ft/checkpoints/checkpoint_best.pt \
        --data demo_data --split test
"""

import argparse
import json
import logging

import torch

import beats_fairseq  # noqa: F401  (registers the task and model)
from beats_fairseq.metrics import accuracy, mean_average_precision


def evaluate(checkpoint: str, data: str, split: str, label_ext=None, batch_size: int = 16, device: str = "cpu"):
    from fairseq import checkpoint_utils

    overrides = {"data": data}
    if label_ext:
        overrides["label_ext"] = label_ext
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=overrides)
    model = models[0].to(device).eval()
    names = [r["display_name"] for r in task.class_map()]
    if model.class_names is not None and names != model.class_names:
        logging.warning("the class map of %s differs from the classes stored in the checkpoint", data)
    dataset = task.build_labelled_dataset(split, num_classes=model.cfg.num_classes)
    iterator = task.get_batch_iterator(dataset, max_sentences=batch_size).next_epoch_itr(shuffle=False)
    scores, targets = [], []
    with torch.no_grad():
        for batch in iterator:
            if not batch:
                continue
            net_input = {k: v.to(device) for k, v in batch["net_input"].items()}
            logits, _ = model(**net_input)
            scores.append(model.probabilities(logits).float().cpu())
            targets.append(batch["target"])
    scores, targets = torch.cat(scores), torch.cat(targets)
    return {
        "checkpoint": checkpoint,
        "split": split,
        "clips": int(scores.shape[0]),
        "accuracy": round(accuracy(scores, targets), 4),
        "mAP": round(mean_average_precision(scores, targets), 4),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="fine-tuned fairseq checkpoint (beats_classifier)")
    p.add_argument("--data", required=True, help="folder with {split}.tsv, the label files and labels.csv")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--label-ext", default=None, help="label file extension (default: the checkpoint's task.label_ext)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tag", default=None, help="name to put in the JSON line")
    args = p.parse_args(argv)
    result = evaluate(args.checkpoint, args.data, args.split, args.label_ext, args.batch_size, args.device)
    if args.tag:
        result = {"tag": args.tag, **result}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
