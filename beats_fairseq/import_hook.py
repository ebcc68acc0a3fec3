"""Run a function once, right after a module is imported: how the package registers with fairseq
without importing it (``beats_fairseq/__init__.py``; the rule is in docs/architecture.md).

``when_imported("fairseq", register, "beats_fairseq")`` calls ``register()`` at once when fairseq
is already imported, else right after fairseq's ``__init__`` has run, before the ``import`` that
loaded it returns. When that import happens inside the import of a ``beats_fairseq`` module (e.g.
``from beats_fairseq.loading import load`` imports fairseq), ``register()`` waits until that module
is done: registering imports the package's modules, and one of them may import the half-run module.

Only the imports of ``fairseq`` and of ``beats_fairseq`` modules go through the hook, and only until
it has fired; every module keeps its own loader as ``__loader__`` and ``__spec__.loader``.
"""

import importlib.abc
import sys
from typing import Callable


class _Loader:
    """Runs a module with its own loader and tells the hook when that starts and ends."""

    def __init__(self, loader, hook: "_Hook"):
        self.loader, self.hook = loader, hook

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        self.hook.started(module.__name__)
        done = False
        try:
            self.loader.exec_module(module)
            done = True
        finally:
            self.hook.finished(module.__name__, done)


class _Hook(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable[[], None], package: str):
        self.name, self.callback, self.package = name, callback, package
        self.depth = 0  # modules of the package being imported, one inside the other
        self.due = False  # the module is imported; the callback waits for depth 0

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name and not fullname.startswith(self.package + "."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, self)
        return spec

    def started(self, fullname: str) -> None:
        if fullname != self.name:
            self.depth += 1

    def finished(self, fullname: str, done: bool) -> None:
        if fullname != self.name:
            self.depth -= 1
        elif done:
            self.due = True
        if self.due and self.depth == 0 and done:
            self.fire()

    def fire(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
            self.callback()


def when_imported(name: str, callback: Callable[[], None], package: str) -> None:
    """Call ``callback()`` once: now if module ``name`` is imported, else right after it is, but never
    while a module of ``package`` is half-run (see the module's docstring)."""
    if name in sys.modules:
        callback()
        return
    sys.meta_path.insert(0, _Hook(name, callback, package))
