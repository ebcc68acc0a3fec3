"""Per-clip random draws, and the one way to seed them (:func:`derived_seed`).

**The per-clip rule** (the other docstrings point here). The random numbers that belong to one
clip in one update come from a generator seeded with (``common.seed``, update number, clip
id, purpose), where the clip id is the clip's dataset index (``sample["id"]``, which the
criteria pass to the models as ``clip_ids``). So:

* a clip gets the same draws whatever batch, DataLoader worker or rank it lands in: 2
  processes with batch B draw exactly what 1 process with batch 2B draws;
* a resumed run draws what the uninterrupted one would have drawn;
* different clips (hence different ranks) get different draws, although fairseq seeds torch's
  global generator alike on every rank, and that generator (dropout) is left alone;
* in eval mode the pre-training masks leave the update number out (``-1``): every validation
  uses the same masks.

Users: the pre-training masks (``BeatsModel.clip_noise``; several views ``k > 0`` add ``k``)
and the fine-tuning augmentations (``augment.ClipRandom``; only mixup's pairing depends on
the whole batch). Without clip ids (direct calls) both draw from torch's global generator.
"""

import numpy as np


def derived_seed(*entropy: int) -> int:
    """A 64-bit seed that is a function of the integers ``entropy`` only (NumPy's SeedSequence)."""
    high, low = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return int(high) << 32 | int(low)
