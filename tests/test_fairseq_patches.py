"""fairseq is patched in one module (``beats_fairseq/fairseq_patches.py``), once, and only where
the attributes it replaces still exist upstream."""

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from beats_fairseq import fairseq_patches
from beats_fairseq.fairseq_patches import PATCHES, FairseqVersionWarning, Patch, apply_fairseq_patches

PACKAGE = Path(__file__).resolve().parents[1] / "beats_fairseq"

# In a fresh interpreter: every patched attribute exists in fairseq before patching (and is defined
# where it is patched, not inherited); the first call replaces each one, the second changes nothing.
FRESH = """
import json, fairseq
from beats_fairseq.fairseq_patches import MARKER, PATCHES, apply_fairseq_patches
out = {"marked_before": bool(getattr(fairseq, MARKER, False)), "missing": [], "targets": [p.target for p in PATCHES]}
originals = {}
for p in PATCHES:
    try:
        originals[p.target] = p.original()
    except AttributeError as exc:
        out["missing"].append(str(exc))
apply_fairseq_patches()
first = {p.target: p.original() for p in PATCHES}
apply_fairseq_patches()
second = {p.target: p.original() for p in PATCHES}
out["replaced"] = [t for t in originals if first[t] is not originals[t]]
out["changed_by_second_call"] = [t for t in first if second[t] is not first[t]]
print(json.dumps(out))
"""


def test_every_patched_attribute_exists_upstream_and_applying_twice_is_a_no_op():
    done = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert not out["marked_before"], "importing beats_fairseq must not patch fairseq (the tasks do)"
    assert not out["missing"], "\n".join(out["missing"])
    # two patches of one attribute (load_checkpoint) stack: the later wraps the earlier
    assert sorted(out["replaced"]) == sorted(set(out["targets"])) and len(out["targets"]) == len(PATCHES) == 12
    assert out["changed_by_second_call"] == []


def test_applying_again_in_this_process_keeps_the_same_objects():
    import fairseq_cli.train  # noqa: F401  (imported in a training process: the patches of it wait for that)

    apply_fairseq_patches()
    before = {p.target: p.original() for p in PATCHES}
    apply_fairseq_patches()
    assert all(p.original() is before[p.target] for p in PATCHES)


def test_each_patch_names_its_fairseq_version_and_reason():
    for patch in PATCHES:
        doc = " ".join((patch.make.__doc__ or "").split())
        assert doc.startswith("Written for {} {}, ".format(*fairseq_patches.WRITTEN_FOR)), patch.name
        assert len(doc) > 150, f"{patch.name}: say why fairseq needs it"


def test_a_patch_of_a_vanished_attribute_fails_naming_it():
    gone = Patch("fairseq.checkpoint_utils", "no_such_function", lambda original: original)
    with pytest.raises(AttributeError, match=r"fairseq\.checkpoint_utils\.no_such_function does not exist in .*"
                                             r"written for ve-fairseq 0\.12\.3"):
        gone.owner_and_name()


def test_another_fairseq_version_warns_at_import(monkeypatch):
    monkeypatch.setattr(fairseq_patches, "installed_fairseq", lambda: ("ve-fairseq", "0.13.0"))
    with pytest.warns(FairseqVersionWarning, match=r"written for ve-fairseq 0\.12\.3, but ve-fairseq 0\.13\.0"):
        fairseq_patches.check_fairseq_version()
    monkeypatch.setattr(fairseq_patches, "installed_fairseq", lambda: fairseq_patches.WRITTEN_FOR)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fairseq_patches.check_fairseq_version() is None


def fairseq_assignments(source: str):
    """Line numbers of ``source`` that assign onto a fairseq module or class (``name.attr = ...`` or
    ``setattr(name, ...)`` with ``name`` imported from fairseq), or onto any ``__class__``."""
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fairseq":
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] == "fairseq")
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args:
            targets = [ast.Attribute(value=node.args[0], attr="?")]
        for target in targets:
            if not isinstance(target, ast.Attribute):
                continue
            base = target.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if target.attr == "__class__" or (isinstance(base, ast.Name) and base.id in names):
                found.append(node.lineno)
    return sorted(found)


def test_fairseq_is_patched_in_fairseq_patches_only():
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "fairseq_patches.py" for line in fairseq_assignments(path.read_text())]
    assert not found, "fairseq changed outside beats_fairseq/fairseq_patches.py:\n" + "\n".join(found)
    assert fairseq_assignments((PACKAGE / "fairseq_patches.py").read_text())  # the check sees the real ones


def test_the_assignment_check_sees_patches():
    source = ("from fairseq import checkpoint_utils\nimport fairseq.distributed\nfrom x import y\n"
              "checkpoint_utils.load_checkpoint = None\nsetattr(fairseq.distributed, 'x', 1)\nitr.__class__ = int\n"
              "y.z = 1\nself.cfg = checkpoint_utils\n")
    assert fairseq_assignments(source) == [4, 5, 6]
