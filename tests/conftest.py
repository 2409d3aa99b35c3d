import os

import pytest

# Tests never reach a model hub: fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omniclip import registry  # noqa: E402
from tests.toy_modality import ToyModality  # noqa: E402

if "toy" not in registry.names("modality"):
    registry.register("modality", "toy", ToyModality)


@pytest.fixture(scope="session")
def tiny_backbone():
    import torch

    from omniclip.backbone import load_backbone

    torch.manual_seed(0)
    return load_backbone("omniclip-tiny")
