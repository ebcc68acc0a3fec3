"""Data layer: audio reading, manifests/labels, :class:`AudioDataset`, demo corpus.

Manifest helpers are imported eagerly (numpy only); the torch/fairseq-backed
names are imported on first access.
"""

import importlib

from .manifest import (
    Manifest,
    ManifestError,
    read_class_map,
    read_label_file,
    read_manifest,
    write_class_map,
    write_manifest,
)

_LAZY = {
    "AudioReadError": ".audio",
    "MIN_SAMPLES_ONE_PATCH": ".audio",
    "read_audio": ".audio",
    "AudioDataset": ".audio_dataset",
    "generate_corpus": ".demo",
}

__all__ = [
    "Manifest", "ManifestError", "read_manifest", "write_manifest", "read_label_file",
    "read_class_map", "write_class_map", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
