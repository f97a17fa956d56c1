"""Opening any model reference: a local folder, a Hub repo pinned to a commit, or ``model+adapter``."""

from __future__ import annotations

from pathlib import Path

from hubmerge.sources.hub_model import HubReads, open_hub_model
from hubmerge.sources.lora import with_adapter
from hubmerge.sources.model import ModelSource, local_folder, on_hub, open_local_model
from hubmerge.spec.model import ModelRef


def open_model(ref: ModelRef, *, base_dir: Path | None = None, hub: HubReads | None = None,
               allow_pickle: bool = False) -> ModelSource:
    """Open a model reference: a local folder if one exists at the path, else a Hub repo (read through ``hub``).

    ``model+adapter`` references fold the PEFT adapter into the model's tensors as they are read.
    ``allow_pickle`` lets models (and adapters) that only have pickle checkpoints be read."""
    if ref.lora is not None:
        model = open_model(ModelRef(ref.path, ref.revision), base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
        return with_adapter(model, ref, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
    local = local_folder(ref, base_dir)
    if local is not None:
        return open_local_model(ref, local, allow_pickle=allow_pickle)
    return on_hub(ref, hub, lambda: open_hub_model(hub, ref, allow_pickle=allow_pickle))
