"""Console entry points as hydra apps over the recipes shipped in ``omniclip.recipes``."""

from __future__ import annotations

from typing import Any, Callable

import hydra
from omegaconf import DictConfig


def hydra_entry(config_name: str, run: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """A ``main()`` that composes ``config_name`` with the command-line overrides and calls ``run``."""

    def main() -> None:
        hydra.main(version_base="1.3", config_path="pkg://omniclip.recipes", config_name=config_name)(run)()

    main.__doc__ = f"Compose the `{config_name}` recipe with command-line overrides, then run it."
    return main
