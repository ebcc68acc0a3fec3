#!/usr/bin/env python
"""Data layer at AudioSet-2M scale: manifest memory per DataLoader worker, and clips/s per worker.

Memory (``--part memory``; no audio is read):

* a synthetic AudioSet-style manifest of ``--entries`` lines (default 2,000,000) is written to a
  temporary folder and loaded as the training dataset (``AudioDataset``), in a fresh process:
  load time, and the main process's memory growth (RSS, and PSS/USS from ``/proc/PID/smaps_rollup``);
* ``--workers`` fork-started DataLoader workers (default 4) read every entry's path and size once,
  in a shuffled order (an epoch of index reads, as the workers do before opening the audio): each
  worker's USS
  (private pages: what it copied from the parent) at its start and at the end of the epoch;
* the same for a precomputed label store of ``--entries`` clips (``LabelStore``, labels
  memory-mapped, ``--label-patches`` labels per clip; a sparse file, nothing is computed).

``--code DIR`` imports ``beats_fairseq`` from another checkout (e.g. an export of an older
commit) to measure it the same way: the before/after figures of ``benchmarks/README.md``.

Throughput (``--part throughput``; time it on an idle machine): ``--clips`` 10 s clips are
written as 16 kHz wav, 16 kHz flac and 44.1 kHz wav (resampled to 16 kHz on the fly), and one
process with one thread (what one DataLoader worker is) reads, crops and collates them in
batches of ``--batch`` as the training dataset does, with and without precomputed labels
(``PrecomputedLabelsDataset``, labels of a tiny random tokenizer precomputed for the clips).
Reported: clips/s per worker and the workers one GPU needs at ``--gpu-clips-per-s``.

    python benchmarks/data_scale.py                                 # both parts, 2M entries, 4 workers
    python benchmarks/data_scale.py --part memory --code ../beats-old # the same for an older checkout
    python benchmarks/data_scale.py --part throughput --clips 64 --gpu-clips-per-s 400
    python benchmarks/data_scale.py --entries 20000 --clips 4 --no-save   # smoke test

Results: ``benchmarks/results/data_scale.json`` (latest run of each part + ``history``).
"""

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "data_scale.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data_scale.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["memory", "throughput", "all"], default="all", help="what to measure (default: all)")
    p.add_argument("--entries", type=int, default=2_000_000, help="manifest entries for the memory part (default: 2000000)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the memory part (default: 4)")
    p.add_argument("--label-patches", type=int, default=496, help="labels per clip of the label store (default: 496 = 10 s)")
    p.add_argument("--clips", type=int, default=32, help="10 s clips per format for the throughput part (default: 32)")
    p.add_argument("--batch", type=int, default=8, help="clips per collated batch (default: 8)")
    p.add_argument("--repeats", type=int, default=3, help="passes over the clips; the best is reported (default: 3)")
    p.add_argument("--gpu-clips-per-s", type=float, default=500.0,
                   help="clips/s one GPU trains at, for the workers-per-GPU column (default: 500)")
    p.add_argument("--code", default=str(REPO), help="checkout whose beats_fairseq is measured (default: this one)")
    p.add_argument("--label", default="", help="free text stored with the run (what changed)")
    p.add_argument("--json", default=str(RESULTS), help=f"results file (default: {RESULTS.relative_to(REPO)})")
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    p.add_argument("--data-dir", help=argparse.SUPPRESS)  # internal: the files the parent wrote
    return p


# --------------------------------------------------------------------------- /proc
def memory_of(pid="self") -> dict:
    """MB of RSS, PSS and USS (private clean + dirty) from /proc/PID/smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) / 1024.0
    return {"rss": fields.get("Rss", 0.0), "pss": fields.get("Pss", 0.0),
            "uss": fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0)}


def minus(a: dict, b: dict) -> dict:
    return {k: round(a[k] - b[k], 1) for k in a}


# --------------------------------------------------------------------------- memory (child process)
def write_manifest(folder: Path, entries: int) -> Path:
    """AudioSet-style lines: balanced/unbalanced folders, YouTube ids, 10 s clips (some shorter)."""
    path = folder / "train.tsv"
    with open(path, "w") as f:
        f.write("/data/audioset/audio\n")
        chunk = []
        for i in range(entries):
            vid = f"{i:011x}"[-11:].replace("0", "Q")
            start = (i * 7) % 300
            chunk.append(f"unbal_train/Y{vid}_{start}.000_{start + 10}.000.flac\t{160000 - (i % 5 == 0) * 32000}")
            if len(chunk) == 100_000:
                f.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            f.write("\n".join(chunk) + "\n")
    return path


def write_label_store(folder: Path, entries: int, patches: int) -> Path:
    import numpy as np

    from beats_fairseq.data import label_store

    out = folder / "labels"
    out.mkdir()
    labels_path, offsets_path, meta_path = label_store.label_files(str(out), "train")
    np.lib.format.open_memmap(labels_path, mode="w+", dtype=np.int16, shape=(entries * patches,)).flush()  # sparse
    np.save(offsets_path, np.arange(entries + 1, dtype=np.int64) * patches)
    with open(meta_path, "w") as f:
        json.dump({"format": label_store.FORMAT, "version": label_store.VERSION, "manifest": {"entries": entries}}, f)
    return out


class IndexReads:
    """What a worker touches per clip before opening its audio: the path and the size (or the labels)."""

    def __init__(self, dataset=None, store=None):
        self.dataset, self.store = dataset, store

    def __len__(self):
        return len(self.dataset) if self.dataset is not None else len(self.store.offsets) - 1

    def __getitem__(self, i):
        if self.store is not None:
            return int(self.store.get(i)[:1].sum())
        return len(self.dataset.path(i)) + int(self.dataset.size(i))


def _record_start(folder):
    def init(worker_id):
        with open(os.path.join(folder, f"worker{worker_id}.json"), "w") as f:
            json.dump(memory_of(), f)
    return init


def epoch_of_index_reads(reads, workers: int, folder: str) -> dict:
    import numpy as np
    import torch

    order = np.random.default_rng(0).permutation(len(reads))  # shuffled, as in training
    batches = np.array_split(order, max(1, len(reads) // 512))
    loader = torch.utils.data.DataLoader(reads, batch_sampler=batches, num_workers=workers, collate_fn=len,
                                         persistent_workers=True, worker_init_fn=_record_start(folder),
                                         multiprocessing_context="fork")
    it = iter(loader)
    seen = sum(it)
    assert seen == len(reads), (seen, len(reads))
    per_worker = []
    for k, proc in enumerate(it._workers):
        with open(os.path.join(folder, f"worker{k}.json")) as f:
            start = json.load(f)
        end = memory_of(proc.pid)
        per_worker.append({"start": start, "end": end, "growth": minus(end, start)})
    del it, loader
    return {"workers": per_worker, "max_uss_growth_mb": max(w["growth"]["uss"] for w in per_worker)}


def memory_child(args) -> dict:
    """One measurement in a fresh process, on the files the parent wrote to ``--data-dir``."""
    sys.path.insert(0, args.code)
    import torch

    torch.set_num_threads(1)
    import beats_fairseq

    here = Path(beats_fairseq.__file__).resolve().parents[1] == REPO
    out = {"code": "this checkout" if here else "the --code checkout (see the label)"}
    folder = Path(args.data_dir)
    base = memory_of()
    t0 = time.perf_counter()
    if args.child == "memory_manifest":
        from beats_fairseq.data.audio_dataset import AudioDataset

        reads = IndexReads(dataset=AudioDataset(str(folder / "train.tsv"), max_sample_size=160000))
        out["load_s"] = round(time.perf_counter() - t0, 2)
    else:
        from beats_fairseq.data.label_store import LabelStore

        reads = IndexReads(store=LabelStore(str(folder / "labels"), "train"))
    out["main_growth_mb"] = minus(memory_of(), base)
    out.update(epoch_of_index_reads(reads, args.workers, str(folder)))
    return out


def memory_part(argv, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_manifest(folder, args.entries)
        write_label_store(folder, args.entries, args.label_patches)
        labels_mb = round(os.path.getsize(folder / "labels" / "train.labels.npy") / 2**20, 1)
        result = {"entries": args.entries, "workers": args.workers,
                  "manifest": run_child("memory_manifest", argv + ["--data-dir", tmp]),
                  "label_store": run_child("memory_labels", argv + ["--data-dir", tmp])}
    result["label_store"].update(labels_per_clip=args.label_patches, labels_file_mb=labels_mb)
    result["code"] = result["manifest"]["code"]
    return result


# --------------------------------------------------------------------------- throughput (child process)
def write_clips(folder: Path, clips: int):
    import numpy as np
    import soundfile as sf

    from beats_fairseq.data.manifest import write_manifest as write_tsv

    rng = np.random.default_rng(0)
    formats = {"wav_16k": (16000, "wav"), "flac_16k": (16000, "flac"), "wav_44k_resampled": (44100, "wav")}
    for name, (rate, ext) in formats.items():
        sub = folder / name
        (sub / "audio").mkdir(parents=True)
        rows = []
        for i in range(clips):
            wav = (0.1 * rng.standard_normal(10 * rate)).astype(np.float32)
            sf.write(sub / "audio" / f"{i}.{ext}", wav, rate, subtype="PCM_16")
            rows.append((f"audio/{i}.{ext}", 160000))
        write_tsv(str(sub / "train.tsv"), ".", rows)
    return list(formats)


def precompute_for(folder: Path, tokenizer: str) -> Path:
    from beats_fairseq.cli import precompute_labels

    out = folder / "labels"
    args = ["--tokenizer", tokenizer, "--data", str(folder), "--out", str(out), "--splits", "train",
            "--max-sample-size", "160000", "--num-workers", "0", "--no-progress", "--quiet"]
    assert precompute_labels.main(args) == 0
    return out


def tiny_tokenizer(path: Path) -> str:
    import torch

    from beats_fairseq.models.beats_tokenizer import BeatsTokenizerConfig, BeatsTokenizerModel

    torch.manual_seed(0)
    cfg = BeatsTokenizerConfig(embed_dim=32, encoder_layers=1, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                               encoder_attention_heads=4, conv_pos=16, codebook_size=32, quant_dim=16, kmeans_init=False,
                               estimator_layers=0)
    torch.save(BeatsTokenizerModel(cfg).to_official(), path)
    return str(path)


def clips_per_second(dataset, batch: int, repeats: int) -> float:
    best = math.inf
    for k in range(repeats + 1):  # the first pass warms the page cache and is not counted
        t0 = time.perf_counter()
        for start in range(0, len(dataset), batch):
            dataset.collater([dataset[i] for i in range(start, min(start + batch, len(dataset)))])
        if k:
            best = min(best, time.perf_counter() - t0)
    return len(dataset) / best


def throughput_child(args) -> dict:
    sys.path.insert(0, args.code)
    import torch

    torch.set_num_threads(1)
    from beats_fairseq.data.audio_dataset import AudioDataset
    from beats_fairseq.data.label_store import LabelStore, PrecomputedLabelsDataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = tiny_tokenizer(folder / "tokenizer.pt")
        for name in write_clips(folder, args.clips):
            sub = folder / name
            opts = dict(max_sample_size=160000, crop="start", shuffle=False)
            for labels in (False, True):
                if labels:
                    store = LabelStore(str(precompute_for(sub, tokenizer)), "train")
                    dataset = PrecomputedLabelsDataset(str(sub / "train.tsv"), store=store, **opts)
                else:
                    dataset = AudioDataset(str(sub / "train.tsv"), **opts)
                rate = clips_per_second(dataset, args.batch, args.repeats)
                rows.append({"format": name, "precomputed_labels": labels, "clips_per_s_per_worker": round(rate, 1),
                             "workers_per_gpu": math.ceil(args.gpu_clips_per_s / rate)})
    return {"clips": args.clips, "batch": args.batch, "seconds_per_clip": 10, "gpu_clips_per_s": args.gpu_clips_per_s,
            "rows": rows}


# --------------------------------------------------------------------------- driver
def run_child(part: str, argv) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child", part]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"data_scale.py: the {part} measurement failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_memory(m: dict) -> None:
    print(f"\nmemory: {m['entries']:,} entries, {m['workers']} workers, code: {m['code']}")
    print(f"{'what':<58}{'RSS MB':>10}{'PSS MB':>10}{'USS MB':>10}")
    for part, opened, title in (("manifest", "main process after loading the dataset", "manifest index reads"),
                                ("label_store", "main process after opening the label store", "label store reads")):
        print(f"{opened:<58}" + "".join(f"{m[part]['main_growth_mb'][k]:>10.1f}" for k in ("rss", "pss", "uss")))
        for k, w in enumerate(m[part]["workers"]):
            print(f"{f'worker {k}: growth over an epoch of {title}':<58}"
                  + "".join(f"{w['growth'][key]:>10.1f}" for key in ("rss", "pss", "uss")))
    print(f"manifest load {m['manifest']['load_s']} s; label file {m['label_store']['labels_file_mb']} MB, "
          "memory-mapped (its pages are the page cache's, shared by every process)")


def print_throughput(t: dict) -> None:
    print(f"\nthroughput: {t['clips']} clips of 10 s per format, batches of {t['batch']}, one thread")
    print(f"{'format':<20}{'precomputed labels':>20}{'clips/s/worker':>16}{'workers/GPU':>13}")
    for r in t["rows"]:
        print(f"{r['format']:<20}{str(r['precomputed_labels']):>20}{r['clips_per_s_per_worker']:>16.1f}"
              f"{r['workers_per_gpu']:>13}")
    print(f"(workers/GPU: for a GPU that trains {t['gpu_clips_per_s']:g} clips/s)")


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.child:
        result = throughput_child(args) if args.child == "throughput" else memory_child(args)
        print(json.dumps(result))
        return result
    child_argv = [a for a in argv if a != "--no-save"]
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "label": args.label, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_average_before": load_average()}
    if args.part in ("memory", "all"):
        print(f"memory part: {args.entries:,} entries, {args.workers} workers ...", flush=True)
        result["memory"] = memory_part(child_argv, args)
        print_memory(result["memory"])
    if args.part in ("throughput", "all"):
        print(f"throughput part: {args.clips} clips per format ...", flush=True)
        result["throughput"] = run_child("throughput", child_argv)
        print_throughput(result["throughput"])
    result["load_average_after"] = load_average()
    if not args.no_save:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.is_file() else {}
        history = old.get("history", []) + [result]
        latest = {k: v for k, v in old.items() if k != "history"}
        latest.update({k: v for k, v in result.items()})
        latest["history"] = history
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(latest, indent=1) + "\n")
        print(f"\nwritten to {path}")
    return result


if __name__ == "__main__":
    main()
