"""Opening any model reference: a local folder, a Hub repo pinned to a commit, or ``model+adapter``."""

from __future__ import annotations

from pathlib import Path

from hubmerge.errors import SourceError
from hubmerge.sources.hub_model import HubReads, open_hub_model
from hubmerge.sources.lora import with_adapter
from hubmerge.sources.model import ModelSource, local_folder, on_hub, open_local_model
from hubmerge.sources.moe import expert_view
from hubmerge.spec.model import ModelRef


def open_model(ref: ModelRef, *, base_dir: Path | None = None, hub: HubReads | None = None,
               allow_pickle: bool = False, moe_layout: bool = True, files_only: bool = False) -> ModelSource:
    """Open a model reference: a local folder if one exists at the path, else a Hub repo (read through ``hub``).

    ``model+adapter`` references fold the PEFT adapter into the model's tensors as they are read.
    ``allow_pickle`` lets models (and adapters) that only have pickle checkpoints be read. MoE models are
    seen in their family's layout (``sources.moe``: per-expert tensors fused as transformers 5 and mergekit
    see them) unless ``moe_layout`` is false (the checkpoint's own names). ``files_only`` opens the side files
    alone (config.json optional, no weights): a tokenizer donor."""
    if files_only:
        if ref.lora is not None:
            raise SourceError(f"{ref}: a tokenizer source cannot carry a LoRA adapter",
                              hint="name the model (or repo) whose tokenizer files to use")
        local = local_folder(ref, base_dir)
        if local is not None:
            return open_local_model(ref, local, files_only=True)
        return on_hub(ref, hub, lambda: open_hub_model(hub, ref, files_only=True))
    if ref.lora is not None:
        # The adapter names the checkpoint's own (per-expert) tensors: the MoE view goes on top of the fold.
        model = open_model(ModelRef(ref.path, ref.revision), base_dir=base_dir, hub=hub, allow_pickle=allow_pickle,
                           moe_layout=False)
        source = with_adapter(model, ref, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
    else:
        local = local_folder(ref, base_dir)
        if local is not None:
            source = open_local_model(ref, local, allow_pickle=allow_pickle)
        else:
            source = on_hub(ref, hub, lambda: open_hub_model(hub, ref, allow_pickle=allow_pickle))
    if not moe_layout:
        return source
    try:
        return expert_view(source)
    except BaseException:
        source.close()
        raise
