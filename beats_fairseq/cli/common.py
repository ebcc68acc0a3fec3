"""Shared pieces of the command-line tools that import nothing heavy: errors, the ``main`` wrapper,
shared options.

The rule of ``beats_fairseq/cli/``: a command imports only the standard library and the
package's light modules (this one, ``errors``, ``recipes``, ``choices``) until its arguments are
parsed, so that ``--help`` and argument errors answer at once; torch, fairseq, numpy and the
rest are imported inside ``run(args)``. ``tests/test_cli_startup.py`` checks every command.
The pieces that need torch (devices, model loading, batched audio) are ``inference.py``.
"""

import argparse
import logging
import sys

from ..errors import AudioReadError, ManifestError

logger = logging.getLogger("beats_fairseq.cli")


class CliError(RuntimeError):
    """A user-facing error: the tools print it without a traceback and exit with status 1."""


USER_ERRORS = (CliError, AudioReadError, ManifestError, FileNotFoundError)


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which pytest and others may swap)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def run_main(prog: str, parser: argparse.ArgumentParser, run, argv=None) -> int:
    """Parse ``argv``, call ``run(args)`` with ``prog: LEVEL: message`` logging on stderr
    (root logging is restored afterwards, so in-process calls leave no trace); user errors
    -> one line on stderr and status 1; Ctrl-C -> "interrupted" and status 130."""
    args = parser.parse_args(argv)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"{prog}: %(levelname)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        return int(run(args) or 0)
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        root.handlers = saved[0]
        root.setLevel(saved[1])


def add_inference_args(parser: argparse.ArgumentParser, skip_bad: bool = True) -> None:
    """Options shared by the tools that run a model over audio."""
    group = parser.add_argument_group("inference")
    group.add_argument("--device", default="auto",
                       help="torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ... (default: auto)")
    group.add_argument("--batch-size", type=int, default=8,
                       help="clips per forward pass; shorter clips are zero-padded to the longest one and masked "
                            "(default: 8)")
    group.add_argument("--num-workers", type=int, default=2,
                       help="DataLoader processes that read and resample audio; 0 reads in the main process "
                            "(default: 2)")
    group.add_argument("--max-seconds", type=float, default=None,
                       help="keep only the first this-many seconds of every clip (default: the whole clip)")
    if skip_bad:
        group.add_argument("--skip-bad", action="store_true",
                           help="skip audio files that cannot be read (or are shorter than 0.175 s) with one "
                                "warning each and a count at the end, instead of stopping at the first one")
    group.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    group.add_argument("--quiet", action="store_true", help="log warnings and errors only")


def check_positive(args, *names) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be > 0, got {value}")
