#!/usr/bin/env python
"""Start-up time of every command: ``--help`` (and an unknown option) in fresh processes.

Each ``beats-*`` console script of setup.py is started ``--repeats`` times as its console-script
wrapper does it (``python -c "from MODULE import main; main()" --help``, this checkout's code),
after ``--warmup`` untimed starts (the page cache); ``--bad-args`` also times a call with an
unknown option (argparse's error, status 2). The first row is the bare interpreter
(``python -c pass``), what no command can go below. Every call's exit status is checked.

    python benchmarks/cli_startup.py                          # 5 starts of each command's --help
    python benchmarks/cli_startup.py --repeats 10 --bad-args --label "what changed"
    python benchmarks/cli_startup.py --commands beats-predict beats-pipeline

Prints a table (command, call, min/median/max seconds) and writes
``benchmarks/results/cli_startup.json`` (runs appended to its ``history``). Run it on an idle
machine: every figure is a wall time.
"""

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "cli_startup.json"
BARE = "(python -c pass)"
CALLS = {"help": (["--help"], 0), "bad-args": (["--no-such-option"], 2)}

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encoder_mfu import cpu_idle_fraction, cpu_model, git_commit, load_average  # noqa: E402
from onnx_latency import save_result  # noqa: E402


def console_scripts():
    """{command: (module, function)} of setup.py's ``beats-*`` console scripts, in setup.py's order."""
    found = re.findall(r'"(beats-[\w-]+)=([\w.]+):(\w+)"', (REPO / "setup.py").read_text())
    if not found:
        sys.exit("cli_startup: no beats-* console_scripts found in setup.py")
    return {name: (module, function) for name, module, function in found}


def command_line(name: str, module: str, function: str, args):
    """The process the console script ``name`` starts: its wrapper's code, run by this interpreter."""
    code = f"import sys; from {module} import {function}; sys.argv[0] = {name!r}; sys.exit({function}())"
    return [sys.executable, "-c", code, *args]


def start(cmd, expected: int, env) -> float:
    """Seconds from start to exit of ``cmd``; stops when its exit status is not ``expected``."""
    begin = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - begin
    if proc.returncode != expected:
        sys.exit(f"cli_startup: {' '.join(cmd[:3])} ... exited {proc.returncode}, expected {expected}:\n"
                 f"{proc.stderr[-2000:]}")
    return seconds


def main(argv=None) -> dict:
    scripts = console_scripts()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed starts per command and call (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed starts per command first (default: 1)")
    parser.add_argument("--bad-args", action="store_true", help="also time a call with an unknown option")
    parser.add_argument("--commands", nargs="+", choices=list(scripts), metavar="COMMAND",
                        help="commands to time (default: every beats-* console script of setup.py)")
    parser.add_argument("--label", default="", help="note stored with the run")
    parser.add_argument("--json", default=str(RESULTS), help=f"output file (default {RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")

    idle = cpu_idle_fraction()
    if idle is not None and idle < 0.8:
        print(f"cli_startup: warning: the CPU is only {idle:.0%} idle; start-up times will be inflated",
              file=sys.stderr)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    runs = [(BARE, "", [sys.executable, "-c", "pass"], 0)]
    for name in args.commands or scripts:
        for call in ["help", "bad-args"] if args.bad_args else ["help"]:
            extra, expected = CALLS[call]
            runs.append((name, call, command_line(name, *scripts[name], extra), expected))
    rows = []
    print(f"{'command':<26} {'call':<9} {'min s':>6} {'median':>6} {'max s':>6}")
    for name, call, cmd, expected in runs:
        for _ in range(args.warmup):
            start(cmd, expected, env)
        times = [start(cmd, expected, env) for _ in range(args.repeats)]
        rows.append({"command": name, "call": call, "runs": len(times), "min_s": round(min(times), 3),
                     "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)})
        print(f"{name:<26} {call:<9} {rows[-1]['min_s']:>6.3f} {rows[-1]['median_s']:>6.3f} {rows[-1]['max_s']:>6.3f}",
              flush=True)
    print("\n| command | call | min s | median s | max s |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['command']} | {row['call']} | {row['min_s']:.3f} | {row['median_s']:.3f} | {row['max_s']:.3f} |")
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "label": args.label, "commit": git_commit(), "python": platform.python_version(),
        "cpu_model": cpu_model(), "cpu_idle_before": idle, "loadavg": load_average(),
        "repeats": args.repeats, "warmup": args.warmup, "rows": rows,
    }
    save_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
