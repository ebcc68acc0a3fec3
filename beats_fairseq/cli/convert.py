"""beats-convert: official BEATs checkpoints <-> this project's fairseq checkpoints.

* official -> fairseq (``--to fairseq``): pre-trained -> model ``beats_encoder``, fine-tuned
  -> ``beats_classifier`` (its ``label_dict`` is kept: top-level key of the checkpoint and
  ``model.label_dict`` after ``beats_fairseq.load``, as for the official file), tokenizer -> ``beats_tokenizer``
  (inference only: the official format has no estimator). The file is a regular fairseq
  checkpoint (``cfg`` with ``common``/``task``/``model``/..., ``model`` state dict, empty
  optimizer history) read by ``fairseq.checkpoint_utils.load_model_ensemble_and_task``
  (after ``import beats_fairseq``) and ``beats_fairseq.load``.
* fairseq -> official (``--to official``): ``model.to_official()``. A ``beats`` pre-training
  checkpoint keeps only its encoder: the label predictor and head are not part of the
  official format.

Weights are copied unchanged; nothing random is written, so converting twice gives the same file.
"""

import argparse
import logging
import os
import sys

from .common import CliError, run_main

logger = logging.getLogger("beats_fairseq.cli.convert")

#: Task written into converted checkpoints: it needs no data to be set up (``task.data`` is empty).
CONVERTED_TASK = "beats_pretraining"


def registered_name(model) -> str:
    from fairseq.models import MODEL_REGISTRY

    for name, cls in MODEL_REGISTRY.items():
        if cls is type(model):
            return name
    raise CliError(f"{type(model).__name__} is not a registered fairseq model")


def fairseq_config(model) -> dict:
    """Plain-dict fairseq config (all groups, their defaults) for ``model``'s own config."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.tasks import TASK_DATACLASS_REGISTRY
    from omegaconf import OmegaConf, open_dict

    root = OmegaConf.structured(FairseqConfig())
    model_cfg = model.cfg if OmegaConf.is_config(model.cfg) else OmegaConf.structured(model.cfg)
    task_cfg = OmegaConf.structured(TASK_DATACLASS_REGISTRY[CONVERTED_TASK](data=""))
    with open_dict(root):
        root.model = model_cfg
        root.task = task_cfg
    with open_dict(root.model):
        root.model._name = registered_name(model)
    with open_dict(root.task):
        root.task._name = CONVERTED_TASK
    return OmegaConf.to_container(root, resolve=True, enum_to_str=True)


def fairseq_checkpoint(model, source: str, label_dict=None) -> dict:
    """A fairseq checkpoint dict holding ``model`` (as written by a training run, minus optimizer state)."""
    state = {
        "args": None,
        "cfg": fairseq_config(model),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "criterion": None,
        "optimizer_history": [
            {"criterion_name": None, "optimizer_name": None, "lr_scheduler_state": {}, "num_updates": 0}
        ],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}, "previous_training_time": 0.0},
        "last_optimizer_state": None,
        "beats_converted_from": os.path.basename(source),
    }
    if label_dict:
        state["label_dict"] = dict(label_dict)
    return state


def official_to_fairseq(src: str, dst: str) -> str:
    import torch

    from ..checkpoint import official_kind, read_checkpoint
    from ..loading import from_official

    state = read_checkpoint(src)
    kind = official_kind(state["cfg"])
    model = from_official(state, source=src)
    torch.save(fairseq_checkpoint(model, src, state.get("label_dict")), dst)
    return f"official {kind} -> fairseq model {registered_name(model)}"


def read_label_dict(class_map: str) -> dict:
    from ..data.manifest import read_class_map

    return {r["index"]: r["mid"] for r in read_class_map(class_map)}


def fairseq_to_official(src: str, dst: str, class_map=None) -> str:
    from ..checkpoint import official_kind, save_official
    from .inference import load_model, model_kind

    model = load_model(src, "cpu")
    kind = model_kind(model)
    if not hasattr(model, "to_official"):
        raise CliError(f"{src}: {type(model).__name__} has no official counterpart")
    try:
        official = model.to_official()
    except ValueError as exc:
        raise CliError(f"{src}: {exc}") from None
    cfg = {k: v for k, v in official["cfg"].items() if not k.startswith("_")}
    label_dict = official.get("label_dict") or getattr(model, "label_dict", None)
    if class_map:
        if kind != "classifier":
            raise CliError("--class-map only applies to fine-tuned classifiers")
        label_dict = read_label_dict(class_map)
        if len(label_dict) != model.cfg.num_classes:
            raise CliError(f"{class_map} has {len(label_dict)} classes, the model {model.cfg.num_classes} outputs")
    if kind == "pretraining":
        logger.info("%s: writing the encoder only (the label predictor and head are not part of the official format)", src)
    warn_not_representable(model, src)
    save_official(dst, cfg, official["model"], label_dict if kind == "classifier" else None)
    return f"fairseq model {registered_name(model)} -> official {official_kind(cfg)}"


def warn_not_representable(model, src: str) -> None:
    """The official format has no fbank statistics (call arguments there) and always applies a sigmoid."""
    from ..modules.fbank import FBANK_MEAN, FBANK_STD
    from .inference import model_kind

    mean, std = getattr(model.cfg, "fbank_mean", FBANK_MEAN), getattr(model.cfg, "fbank_std", FBANK_STD)
    if (mean, std) != (FBANK_MEAN, FBANK_STD):
        logger.warning("%s uses fbank_mean=%s, fbank_std=%s; official checkpoints cannot store them: call the official "
                       "extract_features(..., fbank_mean=%s, fbank_std=%s)", src, mean, std, mean, std)
    if model_kind(model) == "classifier" and not model.cfg.multilabel:
        logger.warning("%s is a single-label (softmax) classifier: the official extract_features of the converted "
                       "checkpoint returns sigmoid scores of the same logits, while beats_fairseq.load returns softmax "
                       "probabilities (same argmax and ranking, different scores)", src)


# ---------------------------------------------------------------------------- verification
def test_signal(length: int = 20000) -> tuple:
    """Two deterministic clips (the second one 3/4 long, zero-padded) and their padding mask."""
    import torch

    t = torch.arange(length, dtype=torch.float64) / 16000
    noise = torch.sin(torch.arange(length, dtype=torch.float64) ** 2 * 0.731) * 0.05
    first = 0.3 * torch.sin(2 * torch.pi * 440 * t) + noise
    second = 0.3 * torch.sin(2 * torch.pi * 300 * t * (1 + t)) - noise
    source = torch.stack([first, second]).float()
    padding_mask = torch.zeros(2, length, dtype=torch.bool)
    padding_mask[1, length * 3 // 4:] = True
    source[padding_mask] = 0.0
    return source, padding_mask


def model_outputs(model) -> dict:
    import torch

    from .inference import model_kind

    source, padding_mask = test_signal()
    out = {}
    with torch.inference_mode():
        out["features"] = model.backbone.extract_features(source, padding_mask)[0]
        if model_kind(model) == "classifier":
            out["logits"] = model(source, padding_mask)[0]
        if hasattr(model, "extract_labels"):
            out["labels"] = model.extract_labels(source, padding_mask)
    return out


def verify(src: str, dst: str) -> str:
    """Outputs and shared weights of the two files' models must be identical."""
    import torch

    from .inference import load_model

    before, after = load_model(src, "cpu"), load_model(dst, "cpu")
    sd_before, sd_after = before.backbone.state_dict(), after.backbone.state_dict()
    if sd_before.keys() != sd_after.keys() or any(not torch.equal(sd_before[k], sd_after[k]) for k in sd_before):
        raise CliError(f"verification failed: the encoder weights of {src} and {dst} differ")
    a, b = model_outputs(before), model_outputs(after)
    for name in a:
        if a[name].shape != b[name].shape or not torch.equal(a[name], b[name]):
            diff = (a[name].float() - b[name].float()).abs().max().item() if a[name].shape == b[name].shape else "shape"
            raise CliError(f"verification failed: {name} differs between {src} and {dst} ({diff})")
    return ", ".join(f"{name} identical" for name in a)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-convert",
        description="Convert between official BEATs checkpoints ({'cfg','model'[,'label_dict']}) and this project's "
                    "fairseq checkpoints, for pre-trained models, fine-tuned classifiers and tokenizers. Weights are "
                    "copied unchanged: a round trip gives identical tensors and outputs.",
    )
    parser.add_argument("input", help="checkpoint to convert (official BEATs or fairseq checkpoint of this project)")
    parser.add_argument("output", help="path of the converted checkpoint")
    parser.add_argument("--to", choices=("auto", "fairseq", "official"), default="auto",
                        help="target format; auto: official input -> fairseq, fairseq input -> official (default: auto)")
    parser.add_argument("--class-map",
                        help="fairseq -> official for classifiers: write a label_dict {output index: mid} from this "
                             "index,mid,display_name csv (default: the model's own label_dict, if any)")
    parser.add_argument("--verify", action="store_true",
                        help="reload both files and check that encoder weights and outputs on a test signal are "
                             "identical (encoder features; clip logits of classifiers; labels of tokenizers)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return parser


def run(args) -> int:
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise CliError("input and output are the same file")
    if os.path.exists(args.output) and not args.overwrite:
        raise CliError(f"{args.output} exists: pass --overwrite to replace it")
    from ..checkpoint import is_official, read_checkpoint

    try:
        state = read_checkpoint(args.input)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    official = is_official(state)
    del state
    target = args.to if args.to != "auto" else ("fairseq" if official else "official")
    if (target == "official") == official:
        raise CliError(f"{args.input} is already in the {'official' if official else 'fairseq'} format")
    if args.class_map and target != "official":
        raise CliError("--class-map applies to fairseq -> official conversion only")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if target == "fairseq":
        what = official_to_fairseq(args.input, args.output)
    else:
        what = fairseq_to_official(args.input, args.output, args.class_map)
    print(f"{args.input} ({what}) -> {args.output}")
    if args.verify:
        print(f"verified: {verify(args.input, args.output)}")
    return 0


def main(argv=None) -> int:
    return run_main("beats-convert", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
