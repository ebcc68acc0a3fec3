"""Label budgets: the class-stratified subsets of the labelled train split a budget trains on.

A budget of ``n`` clips per class keeps, of every class, ``n`` clips drawn at random (all of them
when the class has fewer), in manifest order. Multi-label clips count for their first class id.
The draw of a class depends only on the seed and the class, so the subsets of one seed are
nested (the 10 clips of a class are among its 20) and the same for every encoder evaluated on
them. The pipeline draws one subset per evaluation seed s (``plan.evaluation_stages``). A subset is a
manifest beside its labels (``RUN_DIR/budgets/train_10_seed1.tsv``, ``.lbl``), whose root is the
original manifest's audio folder: a fine-tuning reads it with
``dataset.train_subset=RUN_DIR/budgets/train_10_seed1`` (an absolute path, ``task.data`` unchanged).
"""

from pathlib import Path
from typing import Dict, List, Sequence

from .config import PipelineError


def stratified_subset(labels: Sequence[Sequence[int]], per_class: int, seed: int) -> List[int]:
    """Positions of ``per_class`` clips of every class (by first class id), seeded, in ascending order."""
    import numpy as np

    by_class: Dict[int, List[int]] = {}
    for position, ids in enumerate(labels):
        by_class.setdefault(int(ids[0]), []).append(position)
    picked = []
    for cls, positions in sorted(by_class.items()):
        order = np.random.default_rng([seed, cls]).permutation(len(positions))
        picked += [positions[i] for i in order[:per_class]]
    return sorted(picked)


def write_subset(split, per_class: int, seed: int, manifest_out: Path, label_ext: str) -> dict:
    """Write the subset of the :class:`~beats_fairseq.evaluation.LabelledSplit` ``split`` to
    ``manifest_out`` and its labels beside it (``.<label_ext>``); returns what it wrote."""
    from ..data.manifest import read_manifest, write_manifest

    manifest = read_manifest(split.manifest)
    if len(manifest) != len(split.labels):
        raise PipelineError(f"{split.manifest}: {len(manifest)} clips but {len(split.labels)} label lines")
    positions = stratified_subset(split.labels, per_class, seed)
    labels_out = manifest_out.with_suffix(f".{label_ext}")
    tmp = manifest_out.with_name(manifest_out.name + ".tmp")
    write_manifest(tmp, manifest.root, [(manifest.relpath(p), int(manifest.sizes[p])) for p in positions])
    labels_out.write_text("".join(",".join(map(str, split.labels[p])) + "\n" for p in positions), encoding="utf-8")
    tmp.replace(manifest_out)  # last: the stage's output exists only when both files are complete
    classes = len({split.labels[p][0] for p in positions})
    return {"clips": len(positions), "classes": classes, "per_class": per_class, "seed": seed,
            "manifest": str(manifest_out), "labels": str(labels_out)}
