"""Makes ``common.user_dir: ${beats_user_dir:}`` work in every beats-fairseq yaml.

Hydra imports every module of the ``hydra_plugins`` namespace package when it starts
(to discover plugins), before it composes and resolves a config. Importing this module
registers the OmegaConf resolver ``beats_user_dir``, which returns the folder of the
importable ``beats_fairseq`` package (a source checkout installed with ``pip install -e``
or a ``pip install .``). fairseq then imports its user dir from exactly the copy Python
would import, from any working directory.
"""

import importlib.util
import os

from omegaconf import OmegaConf


def beats_user_dir() -> str:
    spec = importlib.util.find_spec("beats_fairseq")
    if spec is None or spec.origin is None:
        raise RuntimeError("beats_fairseq is not importable: run `pip install -e .` in the beats-fairseq checkout")
    return os.path.dirname(os.path.abspath(spec.origin))


if not OmegaConf.has_resolver("beats_user_dir"):
    OmegaConf.register_new_resolver("beats_user_dir", beats_user_dir)
