"""Matplotlib helpers shared by the reports (no display needed: the Agg backend).

``pyplot()`` gives matplotlib.pyplot with the file-only backend; ``bar_chart`` draws labelled
horizontal bars (optionally with error bars and a value on each bar), used by the pipeline's
evaluation chart and by ``beats-evaluate --plot``.
"""

from typing import Optional, Sequence


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(ax, names: Sequence[str], values: Sequence[float], errors: Optional[Sequence[float]] = None,
              xlabel: str = "", colors: Optional[Sequence[str]] = None, digits: int = 3) -> None:
    """Horizontal bars, the first name on top, each bar labelled with its value (± error); a NaN value
    leaves its row empty (e.g. a "... N more ..." separator)."""
    rows = list(range(len(names)))
    ends = [v + (errors[i] if errors else 0.0) for i, v in enumerate(values)]
    ax.barh(rows, values, xerr=errors, color=colors or "tab:blue", alpha=0.85, capsize=3 if errors else 0)
    ax.set_yticks(rows, labels=list(names))
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    top = max([e for e in ends if e == e] + [1e-9])
    ax.set_xlim(0, top * 1.22)
    for i, v in enumerate(values):
        if v == v:  # not NaN
            text = f"{v:.{digits}f}" + (f" ± {errors[i]:.{digits}f}" if errors and errors[i] else "")
            ax.text(ends[i] + top * 0.01, i, text, va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
