"""beats-config-dir: print the folder of an installed recipe config dir.

    fairseq-hydra-train --config-dir $(beats-config-dir beats_iter1) --config-name tiny task.data=DIR

Works the same after ``pip install .``, a wheel, or an editable install of a checkout.

``--architecture CONFIG`` prints instead the architecture of that recipe's model as hydra
overrides, for a randomly initialised classifier of the same shape (fine-tuning recipes hold
no architecture: with ``model.pretrained_path`` it comes from the checkpoint)::

    fairseq-hydra-train --config-dir $(beats-config-dir beats_finetune) --config-name tiny \
        model.pretrained_path=null $(beats-config-dir beats_iter1 --architecture tiny) task.data=DIR
"""

import argparse
import sys

from ..recipes import recipe_dir, recipe_names, recipes_root
from .common import CliError, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-config-dir",
        description="Print the installed config dir of a recipe family, for fairseq-hydra-train --config-dir. "
                    "Without NAME: list every config dir and its yamls.",
        epilog="Example: fairseq-hydra-train --config-dir $(beats-config-dir beats_iter1) --config-name tiny "
               "task.data=demo_data",
    )
    parser.add_argument("name", nargs="?", help="config dir name, e.g. beats_iter1, beats_tokenizer, beats_continue, beats_finetune")
    parser.add_argument("--architecture", metavar="CONFIG", default=None,
                        help="print the model architecture of recipe NAME/CONFIG.yaml as ++model.KEY=VALUE overrides (hydra set-or-add)")
    return parser


def architecture_overrides(name: str, config: str) -> str:
    """``++model.KEY=VALUE`` overrides (space-separated) of the architecture fields of a recipe.

    ``++`` (hydra's set-or-add) because the fine-tuning recipes hold no architecture lines."""
    from omegaconf import OmegaConf

    from ..modules.backbone import ARCH_FIELDS

    path = recipe_dir(name) / f"{config}.yaml"
    if not path.is_file():
        raise CliError(f"recipe {path} does not exist; available: "
                       f"{', '.join(sorted(p.stem for p in path.parent.glob('*.yaml')))}")
    model = OmegaConf.load(path).get("model") or {}
    found = [k for k in ARCH_FIELDS if k in model]
    if not found:
        raise CliError(f"recipe {path} sets no architecture field (model.{ARCH_FIELDS[0]}, ...); "
                       "name a pre-training or tokenizer recipe")
    return " ".join(f"++model.{k}={str(model[k]).lower() if isinstance(model[k], bool) else model[k]}" for k in found)


def run(args) -> int:
    if args.architecture:
        if not args.name:
            raise CliError("--architecture needs the config dir NAME, e.g. beats-config-dir beats_iter1 --architecture tiny")
        print(architecture_overrides(args.name, args.architecture))
        return 0
    if args.name:
        print(recipe_dir(args.name))
        return 0
    root = recipes_root()
    for name in recipe_names():
        configs = " ".join(sorted(p.stem for p in (root / name).glob("*.yaml")))
        print(f"{name}\t{root / name}\t({configs})")
    return 0


def main(argv=None) -> int:
    return run_main("beats-config-dir", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
