"""Command-line tools: one module per ``beats-*`` command of setup.py (and its helpers).

Each command module has ``main(argv=None) -> int`` (the console-script entry point) and runs as
``python -m beats_fairseq.cli.<tool>``; it imports nothing heavy before its arguments are parsed
(the rule: ``common.py``). Usage and output formats: docs/cli.md.
"""
