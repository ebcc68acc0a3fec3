"""The pieces behind the cluster faults of docs/scale.md, one by one, with real signals, processes,
locks and file errors (the end-to-end runs are in tests/test_resume.py and tests/test_distributed.py):
stop signals noted and kept from DataLoader workers, the rank watch's verdicts, the folder lock, a
failed checkpoint write, the dry run's bad files, and where the patches apply."""

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from test_data import _corpus

PYTHON = [sys.executable, "-c"]

STOP_SIGNALS = """
import os, signal
from beats_fairseq import preemption
preemption.install()
os.kill(os.getpid(), signal.SIGUSR1)
os.kill(os.getpid(), signal.SIGTERM)
print("noted", signal.Signals(preemption.agreed_signal()).name)
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # a DataLoader worker is forked like this
    os.write(w, " ".join(sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))).encode())
    os._exit(0)
os.waitpid(pid, 0)
print("child blocks", os.read(r, 100).decode())
print("parent blocks", sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))
"""


def test_stop_signals_are_noted_and_blocked_in_forked_children():
    out = subprocess.run(PYTHON + [STOP_SIGNALS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["noted SIGUSR1", "child blocks SIGTERM SIGUSR1", "parent blocks []"]


# --------------------------------------------------------------------------- rank watch
class RecordingWatch:
    """A :class:`RankWatch` whose verdict is recorded instead of ending the process."""

    def __new__(cls, store, rank, world, timeout):
        from beats_fairseq.rank_watch import RankWatch

        class Recording(RankWatch):
            verdicts = []

            def _exit(self, why):
                self.verdicts.append((time.monotonic(), why))

        return Recording(store, rank, world, timeout)


@pytest.fixture
def threads():
    """Threads started by a test (heartbeats, watches), ended with it: a thread still in a store
    call when Python shuts down aborts the process."""
    started = []
    yield started
    for close in started:
        close()


def beat(threads, store, rank, seconds, interval=0.05):
    """Rank ``rank``'s heartbeat for ``seconds``, in a thread; returns when it stops beating (monotonic)."""
    done = threading.Event()
    end = time.monotonic() + seconds

    def run():
        while time.monotonic() < end and not done.wait(interval):
            store.add(f"beats_alive/{rank}", 1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    threads.append(lambda: (done.set(), thread.join()))
    return end


def watch(threads, store, rank, world, timeout):
    started = RecordingWatch(store, rank, world, timeout).start()
    threads.append(started.close)
    return started


def wait_for(condition, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not condition():
        time.sleep(0.02)
    return condition()


def test_rank_zero_names_the_rank_that_went_silent_and_publishes_it(threads):
    store = torch.distributed.HashStore()
    timeout = 0.6
    silent_from = beat(threads, store, 1, 1.0)
    beat(threads, store, 2, 10.0)
    watch0 = watch(threads, store, 0, 3, timeout)
    assert wait_for(lambda: watch0.verdicts, 5)
    at, why = watch0.verdicts[0]
    assert why.startswith("rank 1 sent no heartbeat for") and store.get("beats_lost") == b"1"
    # rank 1's last beat falls within one interval (0.05 s) before silent_from; 0.3 s: a loaded test machine
    assert timeout - 0.1 < at - silent_from < timeout * 4 / 3 + 0.3


def test_other_ranks_take_rank_zeros_verdict_and_notice_a_dead_store(threads):
    store = torch.distributed.HashStore()
    beat(threads, store, 0, 10.0)
    watch1 = watch(threads, store, 1, 3, 0.6)
    time.sleep(0.3)
    assert not watch1.verdicts
    store.set("beats_lost", "2")
    assert wait_for(lambda: watch1.verdicts, 2) and watch1.verdicts[0][1] == "rank 0 reports rank 2 lost"

    class DeadStore:  # answers once, then the process that hosted it is gone
        calls = 0

        def add(self, key, value):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("Connection reset by peer")
            return 1

        def set_timeout(self, timeout):
            pass

    dead = watch(threads, DeadStore(), 1, 2, 0.6)
    assert wait_for(lambda: dead.verdicts, 2)
    assert "rendezvous store of torch.distributed stopped answering" in dead.verdicts[-1][1]


def test_no_verdict_while_paused_and_an_error_waits_only_until_the_others_are_seen_alive(threads):
    store = torch.distributed.HashStore()
    timeout = 1.2
    watch0 = watch(threads, store, 0, 2, timeout)
    watch0.pause()  # between epochs, after the last one: rank 1 may be gone already
    time.sleep(2 * timeout)
    assert not watch0.verdicts
    beat(threads, store, 1, 10.0)
    watch0.watch()
    t = time.monotonic()
    watch0.explain()  # an error on rank 0 while rank 1 is alive: it goes through once rank 1 is seen beating
    assert time.monotonic() - t < timeout and not watch0.verdicts


# --------------------------------------------------------------------------- folder lock
HOLDER = """
import sys, time
from beats_fairseq.run_lock import hold
assert hold(sys.argv[1]) is None
print("held", flush=True)
time.sleep(120)
"""


def test_a_held_folder_names_its_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    from beats_fairseq.run_lock import folder_held_message, hold

    holder = subprocess.Popen(PYTHON + [HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        other = hold(tmp_path)
        assert other is not None and other.startswith(f"pid {holder.pid} on ") and "-c" in other
        message = folder_held_message(tmp_path, other)
        assert str(tmp_path) in message and f"pid {holder.pid}" in message
    finally:
        holder.kill()
        holder.wait()
    assert hold(tmp_path) is None  # SIGKILL released it: this process holds it now
    assert (tmp_path / "run.lock").read_text().startswith(f"pid {os.getpid()} on ")
    assert hold(tmp_path) is None  # and holding it again changes nothing


# --------------------------------------------------------------------------- failed checkpoint write
@pytest.mark.parametrize("fault", ["no_space_in_the_middle", "read_only_folder"])
def test_a_failed_write_names_the_folder_and_leaves_the_old_file_and_no_temporary_one(fault, tmp_path, monkeypatch,
                                                                                        caplog):
    from beats_fairseq import safe_checkpoints
    from beats_fairseq.safe_checkpoints import EXIT_WRITE_FAILED, CheckpointWriteError, write_atomically

    last = tmp_path / "checkpoint_last.pt"
    last.write_bytes(b"the previous checkpoint")

    def write(f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if fault == "read_only_folder":
        def read_only(path, mode="r", *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

        monkeypatch.setattr(safe_checkpoints, "open", read_only, raising=False)
    with caplog.at_level(logging.ERROR), pytest.raises(CheckpointWriteError) as stop:
        write_atomically(str(last), write)
    assert stop.value.code == EXIT_WRITE_FAILED
    error = "No space left on device" if fault == "no_space_in_the_middle" else "Read-only file system"
    lines = [r.getMessage() for r in caplog.records if "could not write checkpoint" in r.getMessage()]
    assert len(lines) == 1 and f"checkpoint_last.pt in {tmp_path}: " in lines[0] and error in lines[0]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_last.pt"]
    assert last.read_bytes() == b"the previous checkpoint"


# --------------------------------------------------------------------------- dry run, patches
def test_bad_files_found_by_dataloader_workers_are_reported_by_the_epoch_iterator(tmp_path, caplog):
    """What fairseq's dry run over the validation set does: iterate over the batches and nothing
    else. A bad file that a DataLoader worker found is named and known in the main process."""
    from fairseq.data.iterators import EpochBatchIterator

    from beats_fairseq.fairseq_patches import apply_fairseq_patches
    from beats_fairseq.data.audio_dataset import AudioDataset

    apply_fairseq_patches()
    dataset = AudioDataset(_corpus(tmp_path, [4000, 4000, 4000, 4000], corrupt=(2,)), shuffle=False)
    itr = EpochBatchIterator(dataset, dataset.collater, [[0, 1], [2, 3]], num_workers=1)
    with caplog.at_level(logging.WARNING, logger="beats_fairseq.data.audio_dataset"):
        for _ in itr.next_epoch_itr(shuffle=False):
            pass
    assert dataset.known_bad == {2}
    assert len([r for r in caplog.records if "skipping bad audio" in r.getMessage() and "c2.wav" in r.getMessage()]) == 1


PATCHES_IN_A_LOADING_PROCESS = """
import sys
from beats_fairseq.fairseq_patches import apply_fairseq_patches
apply_fairseq_patches()
print("fairseq_cli.train" in sys.modules)
import fairseq_cli.train
apply_fairseq_patches()
print(fairseq_cli.train.validate_and_save.__qualname__.split(".")[0], fairseq_cli.train.train.__qualname__.split(".")[0])
"""


def test_training_loop_patches_apply_only_in_a_training_process():
    """A process that only loads a checkpoint (beats_fairseq.load builds a task) does not import
    fairseq_cli.train, whose import sends the log to stdout; a training process gets the patches."""
    out = subprocess.run(PYTHON + [PATCHES_IN_A_LOADING_PROCESS], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["False", "stop_after_update_on_signal watch_while_training"]
