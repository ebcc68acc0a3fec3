"""Registered fairseq models of beats-fairseq (every name starts with ``beats``).

Every module in this folder is imported here, so importing the package registers them
all, whether fairseq's ``common.user_dir`` or a plain ``import beats_fairseq`` comes first.
A model reads no other checkpoint when it is built: teachers, trained tokenizers and
pre-trained backbones are attached by the tasks, and ``beats_fairseq/loading.py`` turns
checkpoints into models (layers: docs/architecture.md).
"""

import importlib
import os

for _file in sorted(os.listdir(os.path.dirname(__file__))):
    if _file.endswith(".py") and not _file.startswith("_"):
        importlib.import_module(f"{__name__}.{_file[:-3]}")
