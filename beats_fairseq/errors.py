"""The errors of bad input files (audio, manifests), importable without numpy or torch: the
commands (``beats_fairseq/cli/common.py``) report them as one line before they import those.

They are raised by ``beats_fairseq/data/audio.py`` and ``beats_fairseq/data/manifest.py`` and
importable from there and from ``beats_fairseq.data`` too.
"""

_DEFAULT_HINT = (
    "check that the file exists and decodes (e.g. `python -c \"import soundfile; "
    "print(soundfile.info('FILE'))\"`), re-encode it (e.g. to 16-bit wav) or remove "
    "it from the manifest; AudioDataset(bad_audio='skip') skips such files"
)


class AudioReadError(RuntimeError):
    """An audio file could not be used. ``str(err)`` names the file, the reason
    and what to do; ``err.path`` / ``err.reason`` hold the parts."""

    def __init__(self, path, reason, hint=None):
        self.path = str(path)
        self.reason = str(reason)
        self.hint = hint if hint is not None else _DEFAULT_HINT.replace("FILE", self.path)
        super().__init__(f"cannot read audio file '{self.path}': {self.reason}; {self.hint}")

    def __reduce__(self):  # keep picklable (DataLoader workers) despite custom __init__
        return (type(self), (self.path, self.reason, self.hint))


class ManifestError(ValueError):
    """A manifest/label/class-map file is malformed; the message names the
    file and (where it applies) the 1-based line number."""
