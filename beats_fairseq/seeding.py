"""One way to derive a random seed from a tuple of integers, for draws that must not depend on
which batch or rank a clip lands in: masks (``models/beats.py``: seed, update, clip id) and
fine-tuning augmentations (``augment.ClipRandom``: seed, update, purpose, clip id)."""

import numpy as np


def derived_seed(*entropy: int) -> int:
    """A 64-bit seed that is a function of the integers ``entropy`` only (NumPy's SeedSequence)."""
    high, low = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return int(high) << 32 | int(low)
