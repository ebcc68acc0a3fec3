"""Where the recipe config dirs are: ``recipe_dir("beats_iter1")``.

The recipes live once, in the repository's ``examples/``. setup.py installs that folder as
``beats_fairseq/examples`` (package data), so a wheel or ``pip install .`` has them next to
the code; a checkout (compat editable install, or running from the clone) reads
``examples/`` itself.
"""

from pathlib import Path
from typing import List

_PACKAGE = Path(__file__).resolve().parent


def recipes_root() -> Path:
    """The folder holding every config dir (``beats_iter1``, ``beats_tokenizer``, ...)."""
    installed = _PACKAGE / "examples"
    if installed.is_dir():
        return installed
    checkout = _PACKAGE.parent
    if (checkout / "setup.py").is_file() and (checkout / "examples").is_dir():
        return checkout / "examples"
    raise FileNotFoundError(f"no recipes next to {_PACKAGE}: neither {installed} (installed package) nor "
                            f"{checkout / 'examples'} (source checkout) exists; reinstall beats-fairseq")


def recipe_names() -> List[str]:
    return sorted(p.name for p in recipes_root().iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def recipe_dir(name: str) -> Path:
    """The config dir ``name`` (a folder of hydra yamls for ``fairseq-hydra-train --config-dir``)."""
    path = recipes_root() / name
    if not (path.is_dir() and any(path.glob("*.yaml"))):
        raise FileNotFoundError(f"no recipe config dir {name!r} in {recipes_root()}; "
                                f"valid names: {', '.join(recipe_names())}")
    return path
