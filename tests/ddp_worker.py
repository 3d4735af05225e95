"""Run by tests/test_ddp.py under `torchrun`: trains test_train's tiny model on its token
stream and writes rank 0's loss history to OUT. argv: ckpt_dir out steps grad_accum batch_size
[die_after_step]. die_after_step kills the whole process (SIGKILL, no cleanup) right after
that step, as a crashed or preempted run would end."""
import json
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_train import CFG, TRAIN, fresh_model, stream  # noqa: E402

from nanochat_core.train import setup_distributed, train  # noqa: E402

ckpt, out, steps, accum, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
die = int(sys.argv[6]) if len(sys.argv) > 6 else None
torch.set_num_threads(1)
rank, world, _ = setup_distributed()
cfg = {**TRAIN, "steps": steps, "grad_accum": accum, "batch_size": bs, "checkpoint_every": 2, "keep_last": 0}


def log(record, step):
    if die is not None and step == die:
        os.kill(os.getpid(), signal.SIGKILL)


res = train(fresh_model(), stream(), cfg, ckpt, {"config": CFG.to_dict()}, log=log)
if rank == 0:
    with open(out, "w") as f:
        json.dump({"world": world, "resumed_from": res["resumed_from"], "history": res["history"]}, f)
