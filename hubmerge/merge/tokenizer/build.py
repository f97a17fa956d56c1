"""The output tokenizer and, for each input model, where its rows go in the output vocabulary.

Tokenizers are loaded with transformers from the files each source serves (local folder or Hub), never
with remote code. Semantics follow mergekit 0.1.5:

* the base tokenizer (``base_model``, else the first model) is *stripped* of tokens whose id is past the
  model's ``vocab_size`` (tokens the embedding matrix has no row for);
* ``base`` keeps it; ``<model>`` uses that model's tokenizer as it is; ``union`` starts from the base and
  appends every other model's tokens it lacks, then every model's added (special) tokens;
* tokens named in ``tokenizer.tokens`` that the result lacks are appended last;
* each input's permutation maps output token id -> that model's row, or -1 where it lacks the token.

Where we differ on purpose: mergekit appends union tokens in hash-map order (it differs between runs),
we append them in each model's id order, so the same spec gives the same vocabulary every time.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubmerge.errors import PlanError, SourceError
from hubmerge.merge.tokenizer.overrides import TokenOverride
from hubmerge.sources.model import ModelSource

logger = logging.getLogger(__name__)

# What a tokenizer may be made of (generation_config.json is carried separately).
TOKENIZER_INPUT_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
    "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)


def config_vocab_size(config: dict[str, Any]) -> int | None:
    """``vocab_size`` from config.json, or from a nested text config (multimodal models)."""
    for holder in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        value = holder.get("vocab_size") if isinstance(holder, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class TokenizerFiles:
    """A model's tokenizer files in a private temporary folder, loadable any number of times."""

    def __init__(self, source: ModelSource):
        self.name = source.name
        self._tmp = tempfile.TemporaryDirectory(prefix="hubmerge-tok-")
        self.folder = Path(self._tmp.name)
        self.present = False
        for fname in TOKENIZER_INPUT_FILES:
            data = source.read_file(fname)
            if data is not None:
                (self.folder / fname).write_bytes(data)
                self.present = True
        # AutoTokenizer may pick the tokenizer class from the model type.
        (self.folder / "config.json").write_text(json.dumps(source.config))

    def load(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.folder), trust_remote_code=False, use_fast=True)
        except Exception as exc:  # transformers raises many kinds here; the user needs the model and the cause
            raise SourceError(f"cannot load the tokenizer of {self.name}: {exc}",
                              hint="hubmerge loads tokenizers with transformers and never runs remote code; "
                                   "the model needs tokenizer.json (or a tokenizer transformers knows)") from None

    def cleanup(self) -> None:
        self._tmp.cleanup()


def _strip(files: TokenizerFiles, vocab_size: int):
    """The tokenizer without tokens whose id is >= vocab_size (they have no embedding row)."""
    tok = files.load()
    unused = {t for t, i in tok.get_vocab().items() if i >= vocab_size}
    if not unused:
        return tok, files
    logger.info("%s: dropping %d tokenizer entries past vocab_size=%d", files.name, len(unused), vocab_size)
    stripped = tempfile.TemporaryDirectory(prefix="hubmerge-tok-")
    folder = Path(stripped.name)
    tok.save_pretrained(str(folder))
    doc = json.loads((folder / "tokenizer.json").read_text())
    model = doc["model"]
    if model.get("type") not in ("BPE", "WordLevel", "WordPiece") or not isinstance(model.get("vocab"), dict):
        raise SourceError(f"{files.name}: its tokenizer has {len(unused)} tokens past vocab_size={vocab_size} and is "
                          f"of type {model.get('type')}, which hubmerge cannot trim",
                          hint="use a tokenizer_source whose tokenizer matches its embedding size")
    doc["added_tokens"] = [e for e in doc.get("added_tokens", []) if e["id"] < vocab_size]
    for t in unused:
        model["vocab"].pop(t, None)
    if model["type"] == "BPE":
        def keep(merge: Any) -> bool:
            parts = merge.split(" ") if isinstance(merge, str) else list(merge)
            return not any(p in unused for p in parts)
        model["merges"] = [m for m in model.get("merges", []) if keep(m)]
    (folder / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False))
    config_path = folder / "tokenizer_config.json"
    if config_path.exists():
        cfg = json.loads(config_path.read_text())
        decoder = cfg.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            cfg["added_tokens_decoder"] = {k: v for k, v in decoder.items() if int(k) < vocab_size}
        config_path.write_text(json.dumps(cfg, indent=2))
    trimmed = TokenizerFiles.__new__(TokenizerFiles)
    trimmed.name, trimmed._tmp, trimmed.folder, trimmed.present = files.name, stripped, folder, True
    return trimmed.load(), trimmed


@dataclass
class OutputTokenizer:
    """The merged model's tokenizer and how every input's vocabulary maps onto it."""

    tokenizer: Any  # a transformers tokenizer, saved into the output folder
    vocab: dict[str, int]
    rows: int  # embedding rows of the output: len(vocab) rounded up to pad_to_multiple_of
    permutations: dict[int, torch.Tensor]  # model index -> int64 [len(vocab)]: that model's row, or -1
    original_vocabs: dict[int, dict[str, int]]  # model index -> its own tokenizer's vocabulary
    overrides: list[TokenOverride] = field(default_factory=list)
    model_refs: list[Any] = field(default_factory=list)  # model index -> its ModelRef (to match override sources)
    _keep: list[TokenizerFiles] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for f in self._keep:
            f.cleanup()


def _union(base_files: TokenizerFiles, base_tok, tokenizers: dict[int, Any], vocab_sizes: dict[int, int]):
    """The base tokenizer plus every other model's missing tokens, then all added tokens."""
    regular: dict[str, None] = {}
    added: dict[str, Any] = {}
    for index, tok in tokenizers.items():
        decoder = tok.added_tokens_decoder
        added_texts = {info.content for info in decoder.values()}
        for text, tid in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if tid >= vocab_sizes[index]:
                logger.warning("token %r of model #%d is past its vocab_size; left out", text, index)
                continue
            if text not in added_texts:
                regular.setdefault(text, None)
        for tid, info in sorted(decoder.items()):
            if tid >= vocab_sizes[index]:
                continue
            if info.content in added:
                if added[info.content] != info:
                    logger.warning("token %r is added with different settings in different models; "
                                   "using the first", info.content)
                continue
            added[info.content] = info
    result = base_files.load()
    base_vocab = base_tok.get_vocab()
    for text in regular:
        if text not in added and text not in base_vocab:
            result.add_tokens(text)
    for info in added.values():
        result.add_tokens(info)
    return result


DONOR = "donor"


def build_output_tokenizer(*, source: str | int, base: int, models: list[ModelSource],
                           overrides: list[TokenOverride], pad_to_multiple_of: int | None,
                           donor: ModelSource | None = None) -> OutputTokenizer:
    """``source`` is "base", "union", the index of the model whose tokenizer is used, or ``DONOR``: ``donor``'s
    tokenizer, a model that is no input (as mergekit, taken as it is; tokens no input has get zero rows)."""
    files = {i: TokenizerFiles(m) for i, m in enumerate(models)}
    keep = list(files.values())
    donor_files = None
    if source == DONOR:
        if donor is None:
            raise PlanError("the tokenizer source is not one of the inputs and was not opened")
        donor_files = TokenizerFiles(donor)
        keep.append(donor_files)
    try:
        vocab_sizes: dict[int, int] = {}
        tokenizers: dict[int, Any] = {}
        if not files[base].present:
            raise SourceError(f"{models[base].name} has no tokenizer files, but the merge builds its tokenizer "
                              "from this model's", hint="add tokenizer.json to the model, or pick another base")
        base_tok = files[base].load()
        vocab_sizes[base] = config_vocab_size(models[base].config) or len(base_tok.get_vocab())
        base_tok, base_files = _strip(files[base], vocab_sizes[base])
        keep.append(base_files)
        tokenizers[base] = base_tok
        for i, f in files.items():
            if i == base:
                continue
            if not f.present:
                logger.warning("%s has no tokenizer; assuming it shares %s's", models[i].name, models[base].name)
                vocab_sizes[i] = config_vocab_size(models[i].config) or len(base_tok.get_vocab())
                continue
            tokenizers[i] = f.load()
            vocab_sizes[i] = config_vocab_size(models[i].config) or len(tokenizers[i].get_vocab())

        if source == "base":
            out = base_files.load()
        elif source == "union":
            out = _union(base_files, base_tok, tokenizers, vocab_sizes)
        else:
            chosen = donor_files if donor_files is not None else files[source]
            if not chosen.present:
                raise SourceError(f"{chosen.name} has no tokenizer files but is the tokenizer source",
                                  hint="pick a tokenizer_source that ships a tokenizer")
            out = chosen.load()
        existing = set(out.get_vocab())
        for o in overrides:
            if o.token not in existing:
                out.add_tokens(o.token)
                existing.add(o.token)

        vocab = out.get_vocab()
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise PlanError("the output tokenizer's token ids are not contiguous (0..N-1)",
                            hint="the tokenizer source has gaps in its vocabulary; pick another source")
        rows = len(vocab)
        if pad_to_multiple_of and rows % pad_to_multiple_of:
            rows += pad_to_multiple_of - rows % pad_to_multiple_of

        texts = sorted(vocab, key=vocab.__getitem__)
        permutations: dict[int, torch.Tensor] = {}
        for i in range(len(models)):
            own = tokenizers.get(i, base_tok).get_vocab()
            ids = [own.get(t, -1) for t in texts]
            # A token past the model's vocab_size has no row (mergekit fails with a KeyError there).
            permutations[i] = torch.tensor([r if r < vocab_sizes[i] else -1 for r in ids], dtype=torch.int64)
        return OutputTokenizer(out, vocab, rows, permutations,
                               {i: t.get_vocab() for i, t in tokenizers.items()}, list(overrides),
                               [m.ref for m in models], keep)
    except BaseException:
        for f in keep:
            f.cleanup()
        raise
