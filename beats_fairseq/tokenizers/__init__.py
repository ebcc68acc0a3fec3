"""Acoustic tokenizers: the EMA vector quantizer, frozen teachers and trained-tokenizer loading.

``load_frozen_tokenizer(path)`` is what pre-training (iter2+) uses to turn audio into labels.
"""

from .quantizer import NormEMAVectorQuantizer, cosine_kmeans, l2norm  # noqa: F401
from .teacher import Teacher, load_teacher  # noqa: F401
from .trained import NotATokenizerError, load_frozen_tokenizer  # noqa: F401
