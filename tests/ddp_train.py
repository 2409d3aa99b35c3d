"""Run by tests/test_ddp.py, tests/test_fsdp.py and tests/test_multinode.py under torchrun (or as
one process): a toy training run from the recipes; the arguments are recipe overrides.

Two test-only switches, read from the environment, leave the training math untouched:

* ``DDP_TRAIN_DIE_AT_STEP=k``: on torchrun's first attempt (``TORCHELASTIC_RESTART_COUNT=0``) the
  rank ``DDP_TRAIN_DIE_RANK`` (default 1) exits abruptly (``os._exit(1)``, no cleanup) when step
  k+1 is about to start, as a crashed worker would; later attempts run normally.
* ``DDP_TRAIN_REPORT=1``: each rank writes ``<output_dir>/rank<r>.json`` when training starts: where
  it sits (rank, local rank, world size, torchrun's GROUP_RANK, i.e. its node) and the bytes of
  frozen trunk-block parameters it holds, with their full size.
"""

import faulthandler
import json
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_module

from omniclip import parallel, registry, train
from omniclip.trainer import Trainer
from tests.toy_modality import ToyModality

# A hang (a collective mismatch, a teardown deadlock) prints every thread's stack and fails the run
# within minutes (DDP_TRAIN_HANG_S, default 240 s) instead of running into the test's timeout with nothing to read.
faulthandler.dump_traceback_later(float(os.environ.get("DDP_TRAIN_HANG_S", "240")), exit=True)


def _die_at_step(step: int, rank: int) -> None:
    original = Trainer._train_step

    def train_step(self, batches):
        if self.step == step and self.env.rank == rank:
            sys.stderr.write(f"ddp_train: rank {rank} dies before step {step + 1}\n")
            sys.stderr.flush()
            os._exit(1)
        return original(self, batches)

    Trainer._train_step = train_step


def _report_storage() -> None:
    original = Trainer.fit

    def fit(self, *args, **kwargs):
        frozen = [p for p in self.model.trunk.blocks.parameters() if not p.requires_grad]
        local, full = parallel.parameter_bytes(frozen)
        record = {"rank": self.env.rank, "local_rank": self.env.local_rank, "world_size": self.env.world_size,
                  "group_rank": os.environ.get("GROUP_RANK"), "frozen_block_bytes": local,
                  "frozen_block_full_bytes": full}
        Path(self.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.output_dir) / f"rank{self.env.rank}.json").write_text(json.dumps(record))
        return original(self, *args, **kwargs)

    Trainer.fit = fit


if "DDP_TRAIN_DIE_AT_STEP" in os.environ and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
    _die_at_step(int(os.environ["DDP_TRAIN_DIE_AT_STEP"]), int(os.environ.get("DDP_TRAIN_DIE_RANK", "1")))
if os.environ.get("DDP_TRAIN_REPORT") == "1":
    _report_storage()
registry.register("modality", "toy", ToyModality)
with initialize_config_module("omniclip.recipes", version_base="1.3"):
    cfg = compose("train", [f"hydra.searchpath=[file://{Path(__file__).parent / 'recipes'}]", "modality=toy",
                            "data=toy", "debug=default", *sys.argv[1:]])
train.run(cfg)
# A finished run leaves by os._exit: torch 2.11's ~ProcessGroupGloo, run when the DDP model holding the
# group is freed after train.run returns, can deadlock with a gloo worker over the GIL (seen in about
# 1 of 20 CI runs as a rank hanging here after its work was done and saved). Everything is written by now.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
