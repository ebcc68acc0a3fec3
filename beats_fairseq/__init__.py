"""beats-fairseq: BEATs pre-training, tokenizers and fine-tuning as a fairseq user dir.

Importing the package registers its tasks, models and criterions with fairseq (all
names start with ``beats``). ``beats_fairseq.load(path)`` loads any checkpoint of this
project or any official BEATs checkpoint. The layers of the package: ``docs/architecture.md``.
"""

__version__ = "0.1.0"

from . import criterions, models, optim, tasks  # noqa: F401  (registration)
from .loading import from_official, load, load_frozen_tokenizer, load_teacher, model_kind  # noqa: F401
from .tokenizers import NotATokenizerError  # noqa: F401
