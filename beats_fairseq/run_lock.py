"""One run per ``checkpoint.save_dir``: a second launch into a folder a live run holds stops at once.

Two runs writing ``checkpoint_last.pt`` of one folder overwrite each other's training state (a
job submitted twice, a requeued job whose first copy still runs). When training starts, the rank
that writes checkpoints takes a POSIX record lock (``fcntl.lockf``) on ``SAVE_DIR/run.lock`` and
writes into it who holds it (host, pid, scheduler job, start time, command). The lock belongs to
the process: the kernel drops it when the process ends in any way, SIGKILL included (and it is
not inherited by DataLoader workers), so a killed run never leaves it behind and the relaunch
resumes. A launch that finds the lock taken stops before it reads or writes any checkpoint, with
one line naming the other run, and exit status :data:`EXIT_FOLDER_HELD` (73).

On network file systems the lock works where the file system supports POSIX locks (NFS, and
Lustre mounted with ``flock``); where it does not, training goes on with one warning.
"""

import errno
import fcntl
import logging
import os
import shlex
import socket
import sys
import time
from typing import Optional

logger = logging.getLogger(__name__)

#: Exit status of a launch into a ``checkpoint.save_dir`` held by another run (sysexits' EX_CANTCREAT).
EXIT_FOLDER_HELD = 73
LOCK_NAME = "run.lock"
_held = {}  # abspath of the lock file: open file descriptor (kept for the life of the process)


class FolderHeldError(SystemExit):
    """``checkpoint.save_dir`` is held by another run (exit status :data:`EXIT_FOLDER_HELD`, no traceback)."""

    def __init__(self):
        super().__init__(EXIT_FOLDER_HELD)


def describe_this_run() -> str:
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    command = shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv else "?"
    return (f"pid {os.getpid()} on {socket.gethostname()}" + (f", job {job}" if job else "")
            + f", started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {command[:300]}")


def hold(save_dir: str) -> Optional[str]:
    """Take ``save_dir``'s lock for this process: None when this process holds it now (or the file
    system cannot lock), else the holder's description."""
    path = os.path.abspath(os.path.join(save_dir, LOCK_NAME))
    if path in _held:
        return None
    os.makedirs(save_dir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that is just starting"
            os.close(fd)
            return holder
        os.close(fd)
        logger.warning("cannot lock %s (%s): this file system gives no locks, a second run into %s is not detected",
                       path, e, save_dir)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, (describe_this_run() + "\n").encode())
    _held[path] = fd
    return None


def folder_held_message(save_dir: str, holder: str) -> str:
    return (f"checkpoint.save_dir {os.path.abspath(save_dir)} is in use by another run ({holder}): stop it or wait "
            "for it to end, or give this run another checkpoint.save_dir")
