"""Merge methods: pure tensor functions, one module per family, registered in ``registry``."""

from hubmerge.merge.methods.registry import REQUIRED, MergeMethod, Param, all_methods, get_method, register

__all__ = ["REQUIRED", "MergeMethod", "Param", "all_methods", "get_method", "register"]
