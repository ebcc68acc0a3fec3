"""Resolvers of the beats-fairseq yamls: ``${beats_user_dir:}`` and ``${beats_required:KEY}``.

Hydra imports every module of the ``hydra_plugins`` namespace package when it starts
(to discover plugins: ``pkgutil.walk_packages`` over ``hydra_plugins.__path__``), before it
composes and resolves a config. setup.py lists ``hydra_plugins`` itself as a (namespace)
package: in a setuptools editable install that puts this checkout's ``hydra_plugins`` folder
into ``hydra_plugins.__path__`` (otherwise the path holds only the editable finder's
placeholder, which pkgutil cannot list, and Hydra never imports this module); a wheel, a
compat editable install and a clone on ``sys.path`` have the folder anyway. Importing this module
registers the OmegaConf resolver ``beats_user_dir``, which returns the folder of the
importable ``beats_fairseq`` package (a source checkout installed with ``pip install -e``
or a ``pip install .``). fairseq then imports its user dir from exactly the copy Python
would import, from any working directory.

``model.tokenizer_path: ${beats_required:model.tokenizer_path}`` marks a value the user must
give. A plain ``???`` does not work for model fields: fairseq merges the yaml into the model
dataclass, and merging a missing value keeps the dataclass default (``None``), so an iter2
recipe without a tokenizer would silently pre-train with the random-projection tokenizer and
a fine-tuning recipe without ``pretrained_path`` would silently start from random weights.
This resolver raises instead, naming the key, when fairseq resolves the config (before
anything is built); giving the key on the command line replaces it.
"""

import importlib.util
import os

from omegaconf import OmegaConf


def beats_user_dir() -> str:
    spec = importlib.util.find_spec("beats_fairseq")
    if spec is None or spec.origin is None:
        raise RuntimeError("beats_fairseq is not importable: run `pip install -e .` in the beats-fairseq checkout")
    return os.path.dirname(os.path.abspath(spec.origin))


def beats_required(key: str) -> str:
    raise ValueError(f"{key} is required by this recipe: add {key}=... to the command line "
                     f"(the comment next to {key} in the yaml says what it must be)")


if not OmegaConf.has_resolver("beats_user_dir"):
    OmegaConf.register_new_resolver("beats_user_dir", beats_user_dir)
if not OmegaConf.has_resolver("beats_required"):
    OmegaConf.register_new_resolver("beats_required", beats_required)
