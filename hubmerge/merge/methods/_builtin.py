"""Imports every method family so each registers itself. Add new families here."""

from hubmerge.merge.methods import (  # noqa: F401
    arcee_fusion,
    linear,
    model_stock,
    nearswap,
    passthrough,
    ram,
    sce,
    slerp,
    task_arithmetic,
)
