"""Acoustic tokenizers' parts: the EMA vector quantizer, the iter1 random projection, frozen
teachers and frozen trained tokenizers (the wrappers the training tasks attach to their models).

The tokenizer model itself is ``models/beats_tokenizer.py``; loading teachers and trained
tokenizers from checkpoints is ``beats_fairseq/loading.py`` (``load_teacher``,
``load_frozen_tokenizer``). Nothing here imports a model class.
"""

from .quantizer import NormEMAVectorQuantizer, cosine_kmeans, l2norm  # noqa: F401
from .teacher import Teacher  # noqa: F401
from .trained import FrozenTokenizer, NotATokenizerError  # noqa: F401
