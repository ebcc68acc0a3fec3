"""Deterministic synthetic labelled audio corpus (no downloads).

Six sound classes (harmonic tone, up-chirp, down-chirp, band-passed noise
burst, click train, amplitude-modulated tone) are placed at random onsets,
levels and pitches over white/pink/brown noise at a random SNR, or silence.
Output layout in ``--out DIR``::

    audio/<split>/<split>_00000.wav         16 kHz mono 16-bit wav
    audio/<split>_multi/<split>_multi_00000.wav
    <split>.tsv        single-label clips (root line = absolute DIR)
    <split>.lbl        one class id per line, aligned with <split>.tsv
    <split>.mlbl       same ids in multi-label form (aligned with <split>.tsv)
    <split>_multi.tsv  clips mixing 1-3 classes
    <split>_multi.mlbl comma-separated class ids, aligned with <split>_multi.tsv
    labels.csv         index,mid,display_name

Every clip is drawn from its own generator seeded by (seed, split, kind,
index), so identical arguments give byte-identical files.

The command ``beats-make-demo-data --out demo_data`` (``beats_fairseq/cli/make_demo_data.py``) calls
:func:`generate_corpus`.
"""

import os

import numpy as np
import soundfile as sf

from ..constants import MIN_SAMPLES_ONE_PATCH, SAMPLE_RATE
from .manifest import write_class_map, write_manifest

CLASSES = ("harmonic_tone", "up_chirp", "down_chirp", "noise_burst", "click_train", "am_tone")
DISPLAY_NAMES = ("Harmonic tone", "Up-chirp", "Down-chirp", "Noise burst", "Click train", "AM tone")
SPLITS = ("train", "valid", "test")
_BACKGROUNDS = ("silence", "white", "pink", "brown")


def _loguniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _envelope(rng, n):
    """Raised-cosine attack (5-30 ms) and release (20-150 ms)."""
    env = np.ones(n)
    a = min(n // 2, int(rng.uniform(0.005, 0.03) * SAMPLE_RATE))
    r = min(n - a, int(rng.uniform(0.02, 0.15) * SAMPLE_RATE))
    if a > 0:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r > 0:
        env[n - r:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(r) / r)
    return env


def _bandpass(x, lo, hi):
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1.0 / SAMPLE_RATE)
    spec[(f < lo) | (f > hi)] = 0.0
    return np.fft.irfft(spec, n=len(x))


def _harmonic_tone(rng, n, t):
    f0 = _loguniform(rng, 100, 400)
    tilt = rng.uniform(0.5, 1.5)
    x = np.zeros(n)
    for k in range(1, int(rng.integers(3, 8)) + 1):
        if k * f0 > 4000:
            break
        x += np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k**tilt
    return x


def _chirp(rng, n, t, up):
    lo = _loguniform(rng, 250, 600)
    hi = lo * rng.uniform(4, 8)
    f_start, f_end = (lo, hi) if up else (hi, lo)
    dur = n / SAMPLE_RATE
    k = np.log(f_end / f_start)
    phase = 2 * np.pi * f_start * dur / k * (np.exp(k * t / dur) - 1.0)  # exponential sweep
    return np.sin(phase)


def _noise_burst(rng, n, t):
    fc = _loguniform(rng, 1500, 6000)
    bw = fc * rng.uniform(0.3, 0.8)
    return _bandpass(rng.standard_normal(n), fc - bw / 2, fc + bw / 2)


def _click_train(rng, n, t):
    x = np.zeros(n)
    period = int(SAMPLE_RATE / rng.uniform(6, 30))
    clen = int(rng.uniform(0.002, 0.004) * SAMPLE_RATE)
    click = rng.standard_normal(clen) * np.exp(-np.arange(clen) / (clen / 4))
    for start in range(int(rng.integers(0, period)), n - clen, period):
        x[start:start + clen] += click
    return x


def _am_tone(rng, n, t):
    fc = _loguniform(rng, 800, 4000)
    fm, depth = rng.uniform(4, 15), rng.uniform(0.7, 1.0)
    mod = 1.0 - depth * 0.5 * (1.0 - np.cos(2 * np.pi * fm * t))
    return mod * np.sin(2 * np.pi * fc * t + rng.uniform(0, 2 * np.pi))


_DURATIONS = {  # seconds (min, max) per class
    "harmonic_tone": (0.4, 1.2), "up_chirp": (0.3, 0.9), "down_chirp": (0.3, 0.9),
    "noise_burst": (0.15, 0.6), "click_train": (0.5, 1.2), "am_tone": (0.5, 1.5),
}


def make_event(rng, cls, max_len):
    """One event of class index ``cls`` (peak-normalised, enveloped)."""
    name = CLASSES[cls]
    lo, hi = _DURATIONS[name]
    n = max(1, min(max_len, int(rng.uniform(lo, hi) * SAMPLE_RATE)))
    t = np.arange(n) / SAMPLE_RATE
    gen = {"harmonic_tone": _harmonic_tone, "up_chirp": lambda r, n, t: _chirp(r, n, t, True),
           "down_chirp": lambda r, n, t: _chirp(r, n, t, False), "noise_burst": _noise_burst,
           "click_train": _click_train, "am_tone": _am_tone}[name]
    x = gen(rng, n, t) * _envelope(rng, n)
    peak = np.abs(x).max()
    return x / peak if peak > 0 else x


def make_background(rng, n, kind):
    """Unit-RMS coloured noise (white/pink/brown) or zeros for silence."""
    if kind == "silence":
        return np.zeros(n)
    x = rng.standard_normal(n)
    if kind != "white":
        spec = np.fft.rfft(x)
        f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        f[0] = f[1]
        spec /= f ** (0.5 if kind == "pink" else 1.0)
        x = np.fft.irfft(spec, n=n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def make_clip(rng, classes, n, events_per_class=(1, 3)):
    """Mix events of each class in ``classes`` over a random background."""
    fg = np.zeros(n)
    for c in classes:
        for _ in range(int(rng.integers(events_per_class[0], events_per_class[1] + 1))):
            ev = make_event(rng, c, n)
            onset = int(rng.integers(0, n - len(ev) + 1))
            fg[onset:onset + len(ev)] += ev * 10 ** (rng.uniform(-26, -6) / 20)
    kind = _BACKGROUNDS[int(rng.choice(4, p=[0.15, 0.3, 0.3, 0.25]))]
    active = fg[fg != 0]
    fg_rms = np.sqrt(np.mean(active**2)) if active.size else 0.1
    snr_db = rng.uniform(10, 30)
    x = fg + make_background(rng, n, kind) * fg_rms / 10 ** (snr_db / 20)
    peak = np.abs(x).max()
    if peak > 0.98:
        x *= 0.98 / peak
    return x.astype(np.float32)


def _write_split(out, split, n_clips, n_samples, seed, multi):
    split_code = SPLITS.index(split)
    name = f"{split}_multi" if multi else split
    K = len(CLASSES)
    plan_rng = np.random.default_rng([seed, split_code, int(multi), 999])
    if multi:
        plan = [sorted(plan_rng.choice(K, size=int(plan_rng.integers(1, 4)), replace=False).tolist())
                for _ in range(n_clips)]
    else:
        plan = [[int(c)] for c in plan_rng.permutation(np.arange(n_clips) % K)]
    os.makedirs(os.path.join(out, "audio", name), exist_ok=True)
    rows = []
    for i, classes in enumerate(plan):
        rng = np.random.default_rng([seed, split_code, int(multi), i])
        clip = make_clip(rng, classes, n_samples, (1, 2) if multi else (1, 3))
        rel = f"audio/{name}/{name}_{i:05d}.wav"
        sf.write(os.path.join(out, rel), clip, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        rows.append((rel, n_samples))
    write_manifest(os.path.join(out, f"{name}.tsv"), out, rows)
    text = "".join(",".join(map(str, c)) + "\n" for c in plan)
    exts = ("mlbl",) if multi else ("lbl", "mlbl")
    for ext in exts:
        with open(os.path.join(out, f"{name}.{ext}"), "w", encoding="utf-8") as f:
            f.write(text)
    return plan


def generate_corpus(out, num_train=240, num_valid=60, num_test=60, seconds=3.0, seed=0,
                    multi_ratio=0.5):
    """Write the corpus into ``out`` (splits with 0 clips are not written).
    Returns ``{"out", "classes", "counts", "per_class"}``; ``counts`` maps a
    manifest name (e.g. ``train_multi``) to its clip count."""
    if seconds * SAMPLE_RATE < MIN_SAMPLES_ONE_PATCH:
        raise ValueError(f"--seconds={seconds} is too short: clips need >= 0.175 s (one fbank patch row)")
    if min(num_train, num_valid, num_test, seed) < 0 or multi_ratio < 0:
        raise ValueError("clip counts, --seed and --multi-ratio must be >= 0")
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    n_samples = int(round(seconds * SAMPLE_RATE))
    counts = {}
    per_class = {}
    for split, n in zip(SPLITS, (num_train, num_valid, num_test)):
        if n == 0:  # an empty manifest would be rejected by read_manifest: write nothing
            continue
        plan = _write_split(out, split, n, n_samples, seed, multi=False)
        counts[split] = n
        per_class[split] = np.bincount([c[0] for c in plan], minlength=len(CLASSES)).tolist()
        n_multi = int(round(n * multi_ratio))
        if n_multi:
            _write_split(out, split, n_multi, n_samples, seed, multi=True)
            counts[f"{split}_multi"] = n_multi
    write_class_map(os.path.join(out, "labels.csv"), DISPLAY_NAMES)
    return {"out": out, "classes": list(CLASSES), "counts": counts, "per_class": per_class}
