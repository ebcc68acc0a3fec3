"""A fairseq user dir for tests: ``beats_fairseq`` plus one pause at a chosen point of training, so
that a test can send a signal to a real run (or kill one of its ranks) while it is exactly there.

``BEATS_TEST_PAUSE=WHERE:UPDATE``, WHERE one of

* ``update``: before the forward pass of update UPDATE;
* ``validation``: at the start of the validation after update UPDATE;
* ``save``: in the middle of writing a checkpoint file after update UPDATE (its temporary file
  is open).

There the process prints ``PAUSED WHERE UPDATE`` and reads one line from its stdin before it goes
on. Without the variable nothing changes. Launch with ``common.user_dir=<this folder>``.
"""

import os
import sys

import beats_fairseq  # noqa: F401  (registers the tasks, models and criterions)

WHERE, _, UPDATE = os.environ.get("BEATS_TEST_PAUSE", "").partition(":")
CURRENT = {"update": 0}  # the update in progress, or the last one done


def pause(where: str) -> None:
    if where == WHERE and CURRENT["update"] == int(UPDATE):
        print(f"PAUSED {where} {UPDATE}", flush=True)
        sys.stdin.readline()


def install() -> None:
    import fairseq_cli.train
    import torch
    from fairseq.trainer import Trainer

    train_step, validate, save = Trainer.train_step, fairseq_cli.train.validate, torch.save

    def paused_train_step(self, samples, *args, **kwargs):
        CURRENT["update"] = self.get_num_updates() + 1
        pause("update")
        return train_step(self, samples, *args, **kwargs)

    def paused_validate(cfg, trainer, *args, **kwargs):
        pause("validation")
        return validate(cfg, trainer, *args, **kwargs)

    def paused_save(obj, f, *args, **kwargs):
        if str(getattr(f, "name", f)).endswith(".pt.tmp"):
            pause("save")
        return save(obj, f, *args, **kwargs)

    Trainer.train_step, fairseq_cli.train.validate, torch.save = paused_train_step, paused_validate, paused_save


if WHERE:
    install()
