"""Heads that read a trunk's token features: InstructBLIP-style Q-Former + language model."""

from omniclip.heads.instructblip import InstructBlipHead

__all__ = ["InstructBlipHead"]
