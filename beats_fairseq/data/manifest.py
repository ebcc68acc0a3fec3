"""fairseq ``.tsv`` manifests, label files and class maps (numpy only, no torch).

Manifest format (wav2vec/fairseq)::

    /abs/or/relative/root
    audio/train/a.wav<TAB>48000
    audio/train/b.wav<TAB>32000<TAB>anything else is ignored

A relative root is resolved relative to the directory of the manifest file
(not the current working directory, which hydra changes). ``num_samples`` is
the clip length in samples at the training sample rate.

Label file (``.lbl``/``.mlbl``): one line per manifest entry, comma-separated
integer class ids, e.g. ``3`` or ``0,5,12``.

Class map: AudioSet ``class_labels_indices.csv`` form with the header
``index,mid,display_name`` and indices 0..K-1 in order.
"""

import csv
import os
from array import array

import numpy as np

from ..errors import ManifestError


def _err(path, line, msg):
    where = f"{path}, line {line}" if line is not None else str(path)
    return ManifestError(f"{where}: {msg}")


def _read_lines(path, what):
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise _err(path, None, f"{what} file not found (check the path / task.data directory)")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return path, lines


class Manifest:
    """Parsed manifest: ``root`` (absolute), ``sizes`` (int64 num_samples), the absolute
    ``manifest_path``, and the relative paths stored compactly: one numpy byte buffer of the
    UTF-8 paths and their int64 offsets, so a manifest of 2M entries holds two arrays instead
    of 2M Python strings. (Forked DataLoader workers share the parent's pages until they are
    written; the reference counts of 2M string objects would be written, and their pages
    copied, by every worker that touches them.) ``relpath(i)``/``abspath(i)`` decode one entry;
    ``paths`` builds the whole list (tools and tests, not the data path)."""

    def __init__(self, root: str, path_bytes: np.ndarray, path_offsets: np.ndarray, sizes: np.ndarray,
                 manifest_path: str):
        self.root = root
        self.path_bytes = path_bytes
        self.path_offsets = path_offsets
        self.sizes = sizes
        self.manifest_path = manifest_path

    def __len__(self):
        return len(self.sizes)

    def relpath(self, i):
        """Relative path of entry ``i`` (0-based)."""
        start, end = self.path_offsets[i], self.path_offsets[i + 1]
        return self.path_bytes[start:end].tobytes().decode("utf-8")

    def abspath(self, i):
        """Absolute path of entry ``i`` (0-based)."""
        return os.path.join(self.root, self.relpath(i))

    @property
    def paths(self):
        """All relative paths, as a new list."""
        return [self.relpath(i) for i in range(len(self))]


def read_manifest(path, allow_empty=False):
    """Parse a fairseq ``.tsv`` manifest; raise :class:`ManifestError` naming
    the file and line on any problem (missing file, empty manifest, empty
    line, no tab, non-integer or negative num_samples). A manifest with a root
    but no entries is an error unless ``allow_empty``. The file is read line by
    line into the compact arrays (no list of all lines is ever held)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise _err(path, None, "manifest file not found (check the path / task.data directory)")
    buffer, ends, sizes = bytearray(), array("q"), array("q")
    with open(path, "rb") as f:
        root = f.readline().decode("utf-8").rstrip("\r\n").strip()
        if not root:
            raise _err(path, 1, "empty manifest: the first line must be the audio root directory")
        if "\t" in root:
            raise _err(path, 1, f"the first line must be the root directory only, found a tab in {root!r} "
                                "(did you forget the root line?)")
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                raise _err(path, lineno, "empty line (remove it; every line after the root must be "
                                         "'relpath<TAB>num_samples')")
            rel, tab, rest = line.partition(b"\t")
            if not tab:
                raise _err(path, lineno, f"expected 'relpath<TAB>num_samples' but found no tab in "
                                         f"{line.decode('utf-8', 'replace')!r}")
            if not rel.strip():
                raise _err(path, lineno, "empty relative path before the tab")
            n = rest.partition(b"\t")[0].strip()
            try:
                size = int(n)
            except ValueError:
                raise _err(path, lineno, f"num_samples must be an integer, found "
                                         f"{n.decode('utf-8', 'replace')!r}") from None
            if size < 0:
                raise _err(path, lineno, f"num_samples must be >= 0, found {size}")
            buffer += rel
            ends.append(len(buffer))
            sizes.append(size)
    if not sizes and not allow_empty:
        raise _err(path, 2, "empty manifest: it has a root line but no 'relpath<TAB>num_samples' entries")
    root = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(root)))
    offsets = np.zeros(len(ends) + 1, dtype=np.int64)
    offsets[1:] = np.frombuffer(ends, dtype=np.int64) if len(ends) else 0
    return Manifest(root=root, path_bytes=np.frombuffer(bytes(buffer), dtype=np.uint8), path_offsets=offsets,
                    sizes=np.frombuffer(sizes, dtype=np.int64).copy() if len(sizes) else np.zeros(0, np.int64),
                    manifest_path=path)


def write_manifest(path, root, rows):
    """Write a manifest with first line ``root`` and one ``relpath<TAB>n`` line
    per ``(relpath, num_samples)`` in ``rows``. Returns the number of rows."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    out = [str(root)]
    for k, (rel, n) in enumerate(rows):
        rel = str(rel)
        if not rel or any(c in rel for c in "\t\r\n"):
            raise ValueError(f"write_manifest({path}): row {k}: bad relative path {rel!r}")
        if int(n) != n or n < 0:
            raise ValueError(f"write_manifest({path}): row {k}: num_samples must be an int >= 0, got {n!r}")
        out.append(f"{rel}\t{int(n)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return len(out) - 1


def read_label_file(path, num_lines, num_classes=None):
    """Read a label file aligned with a manifest of ``num_lines`` entries.

    Returns one list of int class ids per line (duplicates dropped, order
    kept). Errors name the file and line: empty line, non-integer id, id < 0
    or >= ``num_classes``, and a line count different from ``num_lines``.
    """
    path, lines = _read_lines(path, "label")
    if len(lines) < num_lines:
        raise _err(path, len(lines) + 1, f"missing: the file has {len(lines)} lines but the manifest "
                                          f"has {num_lines} entries (one label line per entry)")
    if len(lines) > num_lines:
        raise _err(path, num_lines + 1, f"extra line: the file has {len(lines)} lines but the manifest "
                                         f"has {num_lines} entries (one label line per entry)")
    labels = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            raise _err(path, lineno, "empty line: every clip needs at least one class id")
        ids = []
        for tok in line.split(","):
            tok = tok.strip()
            try:
                c = int(tok)
            except ValueError:
                raise _err(path, lineno, f"class ids must be comma-separated integers, found {tok!r} "
                                         "(map names/MIDs to indices with the class map first)") from None
            if c < 0 or (num_classes is not None and c >= num_classes):
                lim = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
                raise _err(path, lineno, f"unknown class id {c} (valid ids: {lim})")
            if c not in ids:
                ids.append(c)
        labels.append(ids)
    return labels


_CLASS_MAP_FIELDS = ("index", "mid", "display_name")


def read_class_map(path):
    """Read an ``index,mid,display_name`` csv (with that header) into a list of
    ``{"index": int, "mid": str, "display_name": str}``; indices must be
    0..K-1 in order."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise _err(path, None, "class map file not found")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if header is None:
            raise _err(path, 1, "empty class map: expected the header 'index,mid,display_name'")
        missing = [k for k in _CLASS_MAP_FIELDS if k not in [h.strip() for h in header]]
        if missing:
            raise _err(path, 1, f"header {','.join(header)!r} lacks {missing}; the first line must be "
                                "'index,mid,display_name' (AudioSet class_labels_indices.csv form)")
        rows = []
        for row in reader:
            row = {(k or "").strip(): v for k, v in row.items()}
            line = reader.line_num
            try:
                idx = int((row.get("index") or "").strip())
            except ValueError:
                raise _err(path, line, f"index must be an integer, found {row.get('index')!r}") from None
            if idx != len(rows):
                raise _err(path, line, f"index {idx} out of order: indices must be 0..K-1 in order, "
                                       f"expected {len(rows)}")
            mid, name = row.get("mid"), row.get("display_name")
            if mid is None or name is None:
                raise _err(path, line, "missing 'mid' or 'display_name' column")
            rows.append({"index": idx, "mid": mid.strip(), "display_name": name.strip()})
    if not rows:
        raise _err(path, 2, "class map has a header but no classes")
    return rows


def write_class_map(path, names, mids=None):
    """Write ``names`` as an ``index,mid,display_name`` csv. ``mids`` defaults
    to ``/m/beats_demo_<i>``."""
    path = os.fspath(path)
    names = list(names)
    mids = [f"/m/beats_demo_{i}" for i in range(len(names))] if mids is None else list(mids)
    if len(mids) != len(names):
        raise ValueError(f"write_class_map({path}): {len(names)} names but {len(mids)} mids")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(_CLASS_MAP_FIELDS)
        for i, (m, n) in enumerate(zip(mids, names)):
            w.writerow([i, m, n])
