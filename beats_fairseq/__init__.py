"""beats-fairseq: BEATs pre-training, tokenizers and fine-tuning as a fairseq user dir.

Importing the package registers its tasks, models and criterions with fairseq (all
names start with ``beats``). ``beats_fairseq.load(path)`` loads any checkpoint of this
project or any official BEATs checkpoint.
"""

__version__ = "0.1.0"

import logging as _logging

# fairseq's text_to_speech task logs "Please install tensorboardX" at import time; it is
# not needed here, so keep that logger quiet before fairseq is imported.
_logging.getLogger("fairseq.tasks.text_to_speech").setLevel(_logging.WARNING)

from . import criterions, models, optim, tasks  # noqa: E402,F401  (registration)
from .checkpoint import load  # noqa: E402,F401
