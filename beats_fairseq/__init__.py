"""beats-fairseq: BEATs pre-training, tokenizers and fine-tuning as a fairseq user dir.

Importing the package imports neither torch nor fairseq. Its tasks, models, criterions and
optimizer (all names start with ``beats``) are registered with fairseq as soon as both are
imported, in either order: ``import beats_fairseq`` and then any fairseq API sees them.
``beats_fairseq.load(path)`` loads any checkpoint of this project or any official BEATs
checkpoint. The layers of the package: ``docs/architecture.md``.
"""

import importlib

from .import_hook import when_imported

__version__ = "0.1.0"

# name -> module that defines it; imported on first use (they import torch and fairseq)
_LAZY = {
    "from_official": "loading",
    "load": "loading",
    "load_frozen_tokenizer": "loading",
    "load_teacher": "loading",
    "model_kind": "loading",
    "NotATokenizerError": "tokenizers",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def _register() -> None:
    """Put the package's tasks, models, criterions and optimizer into fairseq's registries."""
    from . import criterions, fused_adam, models, optim, tasks  # noqa: F401


when_imported("fairseq", _register, __name__)
