"""Matplotlib helpers shared by the reports (no display needed: the Agg backend).

``pyplot()`` gives matplotlib.pyplot with the file-only backend; ``bar_chart`` draws labelled
horizontal bars (optionally with error bars and a value on each bar), used by the pipeline's
evaluation chart and by ``per_class_chart`` (``beats-evaluate --plot``).
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


PER_CLASS_BARS = 60  # most bars of a per-class chart


def per_class_chart(path: str, names: Sequence[str], values, counts, metric: str, title: str) -> None:
    """Sorted horizontal bars of the per-class ``values`` (nan: left out), each class labelled with its
    clip count; the best and the worst :data:`PER_CLASS_BARS` // 2 when there are more."""
    rows = sorted(((float(v), f"{n} ({int(c)})") for n, v, c in zip(names, values, counts) if v == v), reverse=True)
    shown = len(rows)
    if shown > PER_CLASS_BARS:
        half = PER_CLASS_BARS // 2
        rows = rows[:half] + [(float("nan"), f"... {shown - PER_CLASS_BARS} more classes ...")] + rows[-half:]
        title += f": the {half} best and {half} worst of {shown} classes"
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.24 * len(rows)), dpi=100)
    bar_chart(ax, [n for _, n in rows], [v for v, _ in rows], xlabel=f"{metric} (class (clips))")
    ax.set_title(title, fontsize=10)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
