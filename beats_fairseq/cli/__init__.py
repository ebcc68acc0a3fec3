"""Command-line tools: beats-predict, beats-extract, beats-evaluate, beats-convert, beats-manifest.

Each module has ``main(argv=None) -> int`` (the console-script entry point) and runs as
``python -m beats_fairseq.cli.<tool>``. Usage and output formats: docs/cli.md.
"""
