"""beats-config-dir: print the folder of an installed recipe config dir.

    fairseq-hydra-train --config-dir $(beats-config-dir beats_iter1) --config-name tiny task.data=DIR

Works the same after ``pip install .``, a wheel, or an editable install of a checkout.
"""

import argparse
import sys

from ..recipes import recipe_dir, recipe_names, recipes_root
from .common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beats-config-dir",
        description="Print the installed config dir of a recipe family, for fairseq-hydra-train --config-dir. "
                    "Without NAME: list every config dir and its yamls.",
        epilog="Example: fairseq-hydra-train --config-dir $(beats-config-dir beats_iter1) --config-name tiny "
               "task.data=demo_data",
    )
    parser.add_argument("name", nargs="?", help="config dir name, e.g. beats_iter1, beats_tokenizer, beats_finetune")
    return parser


def run(args) -> int:
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
