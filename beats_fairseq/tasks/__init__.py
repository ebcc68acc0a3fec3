"""Registered fairseq tasks of beats-fairseq (every name starts with ``beats``).

Every module in this folder is imported here, so importing the package registers them
all, whether fairseq's ``common.user_dir`` or a plain ``import beats_fairseq`` comes first.
When a task builds a model for training (a resumed run included) it attaches the external
checkpoints the model needs (teacher, frozen tokenizer, pre-trained backbone); a model
rebuilt from its checkpoint (``from_checkpoint=True``) gets none (docs/architecture.md).
"""

import importlib
import os

for _file in sorted(os.listdir(os.path.dirname(__file__))):
    if _file.endswith(".py") and not _file.startswith("_"):
        importlib.import_module(f"{__name__}.{_file[:-3]}")
