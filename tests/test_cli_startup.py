"""Every command answers ``--help`` and argument errors before it imports anything heavy.

The rule (``beats_fairseq/cli/common.py``): until its arguments are parsed, a command imports
only the standard library and ``beats_fairseq``'s light modules. Each console script of setup.py
runs in a fresh interpreter, is called with ``--help`` and with an unknown option, and reports
the modules outside the standard library that it imported.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import contextlib, importlib, io, json, sys
before = set(sys.modules)
module_name, calls = sys.argv[1], json.loads(sys.argv[2])
module = importlib.import_module(module_name)
answers = []
for argv in calls:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(argv)
        except SystemExit as exc:
            code = exc.code
    answers.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
imported = {name.split(".")[0] for name in set(sys.modules) - before}
outside = sorted(imported - set(sys.stdlib_module_names) - {"beats_fairseq"})
print(json.dumps({"answers": answers, "outside": outside}))
"""


def console_scripts():
    """{command: module} of setup.py's ``beats-*`` console scripts (each module's function is ``main``)."""
    found = re.findall(r'"(beats-[\w-]+)=([\w.]+):(\w+)"', (REPO / "setup.py").read_text())
    assert found and all(func == "main" for _, _, func in found), found
    return {name: module for name, module, _ in found}


def probe(module: str, *calls):
    """Import ``module`` in a fresh interpreter, call ``main(argv)`` for each of ``calls``."""
    proc = subprocess.run([sys.executable, "-c", PROBE, module, json.dumps(calls)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_console_script_is_checked():
    assert {"beats-predict", "beats-pipeline", "beats-make-demo-data", "beats-config-dir"} <= set(console_scripts())
    assert all(module.startswith("beats_fairseq.cli.") for module in console_scripts().values())


@pytest.mark.parametrize("command", sorted(console_scripts()))
def test_help_and_argument_errors_import_only_the_standard_library(command):
    result = probe(console_scripts()[command], ["--help"], ["--no-such-option"])
    help_call, bad_call = result["answers"]
    assert help_call["code"] == 0 and help_call["stdout"].startswith(f"usage: {command}"), help_call
    assert bad_call["code"] == 2 and f"{command}: error:" in bad_call["stderr"], bad_call
    assert result["outside"] == [], f"{command} imports {result['outside']} before parsing its arguments"


def test_the_probe_sees_heavy_imports():
    """The check can fail: the model-loading helpers of the commands import torch and fairseq."""
    result = probe("beats_fairseq.cli.inference")
    assert {"torch", "fairseq", "numpy"} <= set(result["outside"])
