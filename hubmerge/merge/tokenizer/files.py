"""The output folder's tokenizer files: the built tokenizer, or the donor's files as they are."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from hubmerge.merge.tokenizer.build import TokenizerFiles

logger = logging.getLogger(__name__)

# Carried over unchanged from the tokenizer source when no tokenizer is built (tokenizer and generation files).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
)
GENERATION_FILES = ("generation_config.json",)


def save_tokenizer(tokenizer: Any, folder: Path, chat_template: str | None) -> list[str]:
    """Save with transformers; the chat template goes into tokenizer_config.json, which every transformers
    version reads (newer ones would otherwise write chat_template.jinja, which older ones ignore)."""
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    with tempfile.TemporaryDirectory(prefix="hubmerge-tok-out-") as tmp:
        tokenizer.save_pretrained(tmp, save_jinja_files=False)
        names = []
        for path in sorted(Path(tmp).iterdir()):
            if path.is_file():
                (folder / path.name).write_bytes(path.read_bytes())
                names.append(path.name)
    return names


def write_tokenizer_files(plan, folder: Path) -> list[str]:
    """Tokenizer files for the output folder; returns their names."""
    donor = plan.models[plan.tokenizer_source]
    files: list[str] = []
    built = getattr(plan, "tokenizer", None)
    chat_template = getattr(plan, "chat_template", None)
    if built is not None:
        files += save_tokenizer(built.tokenizer, folder, chat_template)
        copy = GENERATION_FILES
    elif chat_template is not None:
        source = TokenizerFiles(donor)
        try:
            if source.present:
                files += save_tokenizer(source.load(), folder, chat_template)
            else:
                logger.warning("chat_template is set but %s has no tokenizer; no chat template written", donor.name)
        finally:
            source.cleanup()
        copy = GENERATION_FILES
    else:
        copy = TOKENIZER_FILES
    for name in copy:
        data = donor.read_file(name)
        if data is not None and name not in files:
            (folder / name).write_bytes(data)
            files.append(name)
    return files


def tokenizer_file_bytes(plan) -> dict[str, bytes]:
    """The output tokenizer's files as bytes (what ``write_tokenizer_files`` would write), for in-memory use."""
    with tempfile.TemporaryDirectory(prefix="hubmerge-tok-") as tmp:
        names = write_tokenizer_files(plan, Path(tmp))
        return {name: (Path(tmp) / name).read_bytes() for name in names}
