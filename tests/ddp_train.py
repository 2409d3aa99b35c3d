"""Run by tests/test_ddp.py under torchrun: a toy training run from the recipes."""

import faulthandler
import sys
from pathlib import Path

from hydra import compose, initialize_config_module

from omniclip import registry, train
from tests.toy_modality import ToyModality

# A hang (a collective mismatch, a teardown deadlock) prints every thread's stack and fails the run
# within minutes instead of running into the test's timeout with nothing to read.
faulthandler.dump_traceback_later(240, exit=True)
registry.register("modality", "toy", ToyModality)
with initialize_config_module("omniclip.recipes", version_base="1.3"):
    cfg = compose("train", [f"hydra.searchpath=[file://{Path(__file__).parent / 'recipes'}]", "modality=toy",
                            "data=toy", "debug=default", *sys.argv[1:]])
train.run(cfg)
