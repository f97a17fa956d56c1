"""Merge methods: pure tensor functions, one module per family, registered in ``registry``."""

from hubmerge.merge.methods.registry import REQUIRED, MergeMethod, Param, all_methods, get_method, register
from hubmerge.spec import methods as _table


def _load_builtin_families() -> None:
    # Importing the family modules registers their methods; done on the first lookup to keep imports cheap.
    from hubmerge.merge.methods import _builtin  # noqa: F401


_table.add_loader(_load_builtin_families)

__all__ = ["REQUIRED", "MergeMethod", "Param", "all_methods", "get_method", "register"]
