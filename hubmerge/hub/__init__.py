"""The Hub: one facade over huggingface_hub (pinning, files, ranged reads, commits)."""

from hubmerge.hub.client import Hub

__all__ = ["Hub"]
