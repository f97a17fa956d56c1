"""Turning a candidate (values for a spec's search ranges) into an evaluable model.

The inputs are opened once. Small merges (their input tensors within ``cache_limit`` bytes) run in memory:
each input tensor is read once and kept, every candidate is planned from the headers (cheap) and merged
tensor by tensor with the executor's ``merge_tensor`` — the same math as ``hubmerge merge`` — straight
into a state dict, with nothing written to disk. Larger merges are streamed by ``run_merge`` into a
temporary folder (bounded memory while merging) and read back. Either way the weights are copied into
one transformers model built once from the output config.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from hubmerge.evolve.evaluate import ModelHolder, read_state_dict
from hubmerge.merge.executor import _Loaded, aligned, merge_tensor, pick_device
from hubmerge.merge.plan import MergePlan, PlannedInput, build_plan
from hubmerge.merge.plan_config import output_config
from hubmerge.merge.tokenizer.files import tokenizer_file_bytes
from hubmerge.pipeline.run import MergeOptions, open_sources, run_merge
from hubmerge.spec.model import MergeSpec
from hubmerge.spec.parse import spec_from_dict
from hubmerge.spec.search import substitute

logger = logging.getLogger(__name__)

DEFAULT_CACHE_LIMIT = 4 * 1024**3  # bytes of input tensors kept in memory for in-memory candidates


def concrete_spec(spec: MergeSpec, values: Mapping[str, Any]) -> MergeSpec:
    """The spec with every search range replaced by its value (validated like any spec)."""
    return spec_from_dict(substitute(spec.raw, values), source="candidate")


class CandidateMerger:
    def __init__(self, spec: MergeSpec, *, base_dir: Path | None = None, hub: Any = None, device: str = "cpu",
                 eval_dtype: str = "float32", cache_limit: int = DEFAULT_CACHE_LIMIT):
        self.spec = spec
        self.base_dir = base_dir
        self.hub = hub
        self.device_name = device
        self.device = pick_device(device)
        self.eval_dtype = eval_dtype
        self.cache_limit = cache_limit
        self.sources = open_sources(spec, base_dir=base_dir, hub=hub)
        self._cache: dict[tuple, torch.Tensor] = {}
        self.in_memory: bool | None = None
        self.holder: ModelHolder | None = None

    def close(self) -> None:
        for s in self.sources.values():
            s.close()
        self._cache.clear()

    def __enter__(self) -> CandidateMerger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- merging ---------------------------------------------------------------------------------
    def plan(self, spec: MergeSpec) -> MergePlan:
        return build_plan(spec, self.sources)

    def _decide(self, plan: MergePlan) -> None:
        if self.in_memory is None:
            unique = {(i.model, i.info.file, i.info.start): i.info.nbytes for t in plan.tensors for i in t.inputs}
            need = sum(unique.values())
            self.in_memory = need <= self.cache_limit
            logger.info("candidates are merged %s (%.1f MB of input tensors, limit %.1f MB)",
                        "in memory" if self.in_memory else "by streaming to a temporary folder",
                        need / 1e6, self.cache_limit / 1e6)

    def _read(self, plan: MergePlan, item: PlannedInput) -> torch.Tensor:
        key = (plan.models[item.model].name, item.info.file, item.info.start, item.info.name)
        tensor = self._cache.get(key)
        if tensor is None:
            tensor = plan.models[item.model].reader.read(item.info)
            self._cache[key] = tensor
        return tensor

    def state_dict(self, plan: MergePlan) -> dict[str, torch.Tensor]:
        """The merged tensors of one plan, in memory (inputs read once per search)."""
        out = {}
        for item in plan.tensors:
            loaded = _Loaded(self._read(plan, item.base) if item.base is not None else None,
                             [self._read(plan, i) for i in item.others])
            if item.vocab is not None:  # onto the merge's tokenizer; the cached inputs stay as read
                loaded = aligned(item, loaded, recycle=False)
            out[item.name] = merge_tensor(plan, item, loaded, self.device)
        return out

    def _streamed_state_dict(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        from hubmerge.sources.model import open_local_model
        from hubmerge.spec.model import ModelRef

        with tempfile.TemporaryDirectory(prefix="hubmerge-candidate-") as tmp:
            out = Path(tmp) / "merged"
            run_merge(spec, out, MergeOptions(device=self.device_name, base_dir=self.base_dir, show_progress=False),
                      hub=self.hub)
            source = open_local_model(ModelRef(str(out)), out)
            try:
                return read_state_dict(source)
            finally:
                source.close()

    def merged_weights(self, values: Mapping[str, Any]) -> tuple[MergePlan, dict[str, torch.Tensor]]:
        spec = concrete_spec(self.spec, values)
        plan = self.plan(spec)
        self._decide(plan)
        weights = self.state_dict(plan) if self.in_memory else self._streamed_state_dict(spec)
        return plan, weights

    def load(self, values: Mapping[str, Any]) -> ModelHolder:
        """The candidate's merged model, ready to evaluate (the same ModelHolder each time)."""
        plan, weights = self.merged_weights(values)
        if self.holder is None:
            # The merge's own tokenizer (a union of vocabularies, a chat template), not a copy of one input's.
            self.holder = ModelHolder(output_config(plan), tokenizer_file_bytes(plan), dtype=self.eval_dtype,
                                      device=self.device_name, name="candidate")
        self.holder.load(weights)
        return self.holder
