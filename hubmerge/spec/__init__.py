"""Merge specs: parse YAML strictly into typed dataclasses, validate, resolve parameters."""

from hubmerge.spec.model import MergeSpec, ModelRef
from hubmerge.spec.parse import format_size, load_spec, parse_ref, parse_size, parse_spec, spec_from_dict

__all__ = ["MergeSpec", "ModelRef", "format_size", "load_spec", "parse_ref", "parse_size", "parse_spec", "spec_from_dict"]
