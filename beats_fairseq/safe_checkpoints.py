"""Crash-safe checkpoint files, and resuming past a broken ``checkpoint_last.pt``.

fairseq saves a checkpoint by writing the first file (``checkpoint_E_U.pt`` or
``checkpoint_last.pt``) to ``NAME.tmp`` and renaming it, then *copies* it to the other names
(``checkpoint_last.pt``, ``checkpoint_best.pt``, ...). A copy is written in place, so a kill
during the copy leaves a truncated ``checkpoint_last.pt``, and the next launch stops in
``torch.load`` with ``EOFError``. This module holds the replacements for three attributes of
``fairseq.checkpoint_utils`` (installed by ``beats_fairseq/fairseq_patches.py``):

* :func:`safe_torch_persistent_save` and :func:`atomic_copy_path_manager`: every checkpoint
  file, copies included, is written to ``NAME.tmp``, flushed to disk
  (``fsync``) and renamed over ``NAME`` (``os.replace``, atomic on a POSIX file system), so a
  file named ``checkpoint*.pt`` is either the old complete file or the new complete one;
  paths that are not local files (other ``PathManager`` back-ends) keep fairseq's behaviour;
  a write that fails (a full disk, a read-only folder) removes its temporary file, leaves
  ``NAME`` as it was and stops the run with one line naming the folder and the disk's error
  (:class:`CheckpointWriteError`, exit status 74);
* :func:`checked_load_checkpoint`: a ``checkpoint_last.pt`` that is not an intact checkpoint (empty,
  truncated, not a zip archive, or its pickled record fails its CRC) is reported with one
  warning naming it, and training resumes from the newest intact ``checkpoint*.pt`` of
  ``checkpoint.save_dir`` (by modification time; each holds the full training state of its
  update). With none intact the launch stops with a message naming the folder, never a
  silent start from scratch.
"""

import logging
import os
import shutil
import zipfile
from typing import Optional

import torch
from omegaconf import open_dict

logger = logging.getLogger(__name__)


class BrokenCheckpointError(SystemExit):
    """No intact checkpoint to resume from (a SystemExit: the message, no traceback)."""


#: Exit status of a run whose checkpoint could not be written (sysexits' EX_IOERR).
EXIT_WRITE_FAILED = 74


class CheckpointWriteError(SystemExit):
    """A checkpoint file could not be written (exit status :data:`EXIT_WRITE_FAILED`, no traceback);
    ``message`` names the folder and the error. The files already there are unchanged."""

    def __init__(self, path: str, error: BaseException):
        folder, name = os.path.split(os.path.abspath(path))
        self.message = (f"could not write checkpoint {name} in {folder}: {type(error).__name__}: {error}. The "
                        f"checkpoints already in {folder} are unchanged (no temporary file left): free space or "
                        "fix the folder, then run the same command to resume")
        super().__init__(EXIT_WRITE_FAILED)


def _is_local(path: str) -> bool:
    return "://" not in str(path)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _KeepsWriteError:
    """A file whose first write error is kept: torch's zip writer replaces it with its own message
    (``unexpected pos ...``) where the disk said ``No space left on device``."""

    def __init__(self, f):
        self.f = f
        self.error = None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self.f, name)


def write_atomically(path: str, write) -> None:
    """``write(f)`` into ``path + ".tmp"``, fsync, rename over ``path``. When that fails (a full disk,
    a read-only folder) the temporary file is removed, ``path`` is left as it was, and
    :class:`CheckpointWriteError` stops the run with one line naming the folder and the error."""
    tmp = f"{path}.tmp"
    f = None
    try:
        with open(tmp, "wb") as raw:
            f = _KeepsWriteError(raw)
            write(f)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, Exception):
            error = CheckpointWriteError(path, getattr(f, "error", None) or e)
            logger.error(error.message)
            raise error from e
        raise
    _fsync_dir(path)


def atomic_copy(src: str, dst: str) -> None:
    def copy(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, length=16 << 20)

    write_atomically(dst, copy)


def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` is not an intact torch checkpoint, or None. Reads the zip directory (at the
    end of the file: a truncated file has none) and CRC-checks every member (one read of the file)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "the file is empty (0 bytes)"
        with zipfile.ZipFile(path) as archive:
            if not any(n.endswith("data.pkl") for n in archive.namelist()):
                return "no data.pkl record: not a torch checkpoint"
            bad = archive.testzip()
            if bad is not None:
                return f"member {bad} fails its CRC check"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"not a complete checkpoint archive ({type(e).__name__}: {e}; {size} bytes)"
    return None


def newest_intact_checkpoint(save_dir: str, suffix: str = "", exclude: str = "") -> Optional[str]:
    """The intact ``checkpoint*{suffix}.pt`` of ``save_dir`` written last (``exclude`` left out)."""
    try:
        names = os.listdir(save_dir)
    except OSError:
        return None
    paths = [os.path.join(save_dir, n) for n in names
             if n.startswith("checkpoint") and n.endswith(f"{suffix}.pt")]
    paths = [p for p in paths if os.path.abspath(p) != os.path.abspath(exclude) and os.path.isfile(p)]
    for path in sorted(paths, key=os.path.getmtime, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("checkpoint %s is not intact either (%s)", path, problem)
    return None


def safe_torch_persistent_save(original):
    """fairseq's ``torch_persistent_save`` (``original``) writing local files atomically."""

    def torch_persistent_save(obj, filename, async_write: bool = False):
        if async_write or not _is_local(filename):
            return original(obj, filename, async_write=async_write)
        write_atomically(filename, lambda f: torch.save(obj, f))

    return torch_persistent_save


def atomic_copy_path_manager(base):
    """A subclass of fairseq's ``PathManager`` (``base``) whose ``copy`` of local files is atomic."""

    class AtomicCopyPathManager(base):
        @staticmethod
        def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
            if not (_is_local(src_path) and _is_local(dst_path)):
                return base.copy(src_path, dst_path, overwrite)
            if os.path.exists(dst_path) and not overwrite:
                return False
            atomic_copy(src_path, dst_path)
            return True

    return AtomicCopyPathManager


def checked_load_checkpoint(original):
    """fairseq's ``load_checkpoint`` (``original``) resuming past a broken ``checkpoint_last.pt``."""

    def load_checkpoint(cfg, trainer, **passthrough_args):
        suffix = getattr(trainer, "checkpoint_suffix", "") or ""
        last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
        if cfg.restore_file != "checkpoint_last.pt" or not os.path.exists(last):
            return original(cfg, trainer, **passthrough_args)
        problem = checkpoint_problem(last)
        if problem is None:
            return original(cfg, trainer, **passthrough_args)
        fallback = newest_intact_checkpoint(cfg.save_dir, suffix, exclude=last)
        if fallback is None:
            msg = (f"{last} is not an intact checkpoint ({problem}; a run killed while writing it?) and "
                   f"{cfg.save_dir} holds no other intact checkpoint*.pt to resume from: move the broken file "
                   "away to start from scratch, or set checkpoint.restore_file to a checkpoint")
            logger.error(msg)
            raise BrokenCheckpointError(msg)
        logger.warning("%s is not an intact checkpoint (%s; a run killed while writing it?): resuming from %s, "
                       "the newest intact checkpoint in %s", last, problem, fallback, cfg.save_dir)
        restore = os.path.abspath(fallback)
        restore = restore[:-len(f"{suffix}.pt")] + ".pt"  # fairseq inserts the suffix before ".pt" itself
        with open_dict(cfg):
            cfg.restore_file = restore
        try:
            return original(cfg, trainer, **passthrough_args)
        finally:
            with open_dict(cfg):
                cfg.restore_file = "checkpoint_last.pt"

    return load_checkpoint
