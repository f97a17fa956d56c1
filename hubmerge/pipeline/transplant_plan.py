"""Planning a tokenizer transplant (``hubmerge tokensurgeon``) from tokenizers and headers alone.

The output keeps every tensor of the model; the tensors that run over the vocabulary (the input
embedding, the output head, logit biases) get one row per token of the donor's tokenizer. Which rows are
copied (tokens both vocabularies have, matched as ``merge.vocab_match`` normalises them) and which are
approximated is decided here, with the tensors' shapes, before any weight is read. The donor's weights
are read only for OMP (its embedding and output head, nothing else).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hubmerge.errors import PlanError, SourceError
from hubmerge.merge.layout import LAYER_RE, input_embedding_name, is_output_embedding
from hubmerge.merge.tokenizer.align import vocabulary_axis
from hubmerge.merge.tokenizer.build import TokenizerFiles
from hubmerge.merge.vocab_match import VocabMatch, match_vocabularies, normalized_vocab
from hubmerge.sources.model import ModelSource
from hubmerge.sources.safetensors_format import TensorInfo
from hubmerge.spec.tools import TokensurgeonSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocabTensor:
    """A tensor of the model that runs over the vocabulary, and the donor tensor OMP works with for it."""

    name: str
    axis: int
    kind: str  # "embed" | "head" | "aux" (aux: copied rows, zeros for new tokens)
    donor: TensorInfo | None = None  # embed/head with OMP: the donor's matrix (its head falls back to its embedding)


@dataclass
class TransplantPlan:
    spec: TokensurgeonSpec
    model: ModelSource
    donor: ModelSource
    model_tokenizer: Any
    donor_tokenizer: Any
    match: VocabMatch
    vocab_tensors: dict[str, VocabTensor]
    order: list[str]  # every model tensor, in file order
    k: int = 0  # OMP atoms per token (after capping at the donor's hidden size)
    notes: list[str] = field(default_factory=list)
    _files: list[TokenizerFiles] = field(default_factory=list, repr=False)

    @property
    def sources(self) -> list[ModelSource]:
        return [self.model, self.donor]

    def out_shape(self, name: str) -> tuple[int, ...]:
        shape = self.model.tensors[name].shape
        vt = self.vocab_tensors.get(name)
        if vt is None:
            return shape
        return shape[:vt.axis] + (self.match.rows,) + shape[vt.axis + 1:]

    def close(self) -> None:
        for f in self._files:
            f.cleanup()
        for s in self.sources:
            s.close()


def load_tokenizer(source: ModelSource, role: str, files: list[TokenizerFiles]):
    tf = TokenizerFiles(source)
    files.append(tf)
    if not tf.present:
        raise SourceError(f"the {role} {source.name} has no tokenizer files",
                          hint="tokensurgeon needs the tokenizer of both the model and the donor")
    tok = tf.load()
    if not getattr(tok, "is_fast", False):
        raise SourceError(f"the {role} {source.name} has no fast tokenizer (tokenizer.json)",
                          hint="convert it once with transformers (AutoTokenizer.from_pretrained(...)"
                               ".save_pretrained(...)) and use the folder that holds tokenizer.json")
    return tok


def embedding_names(source: ModelSource) -> tuple[str, str | None]:
    """(input embedding, output head or None when tied) of a model, from its tensor names."""
    embed = input_embedding_name(source.tensors)
    if embed is None or len(source.tensors[embed].shape) != 2:
        raise PlanError(f"{source.name} has no input embedding matrix (looked for *embed_tokens.weight, *wte.weight, "
                        "...)", hint="tokensurgeon works on language models with a token embedding")
    rows = source.tensors[embed].shape[0]
    heads = [n for n, i in source.tensors.items() if not LAYER_RE.match(n) and is_output_embedding(n)
             and n.endswith(".weight") and len(i.shape) == 2 and i.shape[0] == rows]
    return embed, (sorted(heads)[0] if heads else None)


def plan_transplant(spec: TokensurgeonSpec, model: ModelSource, donor: ModelSource) -> TransplantPlan:
    files: list[TokenizerFiles] = []
    try:
        return _plan(spec, model, donor, files)
    except BaseException:
        for f in files:
            f.cleanup()
        raise


def _plan(spec: TokensurgeonSpec, model: ModelSource, donor: ModelSource, files: list) -> TransplantPlan:
    donor_tok = load_tokenizer(donor, "donor", files)
    model_tok = load_tokenizer(model, "model", files)
    embed, head = embedding_names(model)
    rows = model.tensors[embed].shape[0]
    donor_vocab = donor_tok.get_vocab()
    out_rows = max(len(donor_vocab), max(donor_vocab.values(), default=-1) + 1)
    notes: list[str] = []
    donor_embed, donor_head = embedding_names(donor)
    donor_rows = donor.tensors[donor_embed].shape[0]
    match = match_vocabularies(normalized_vocab(model_tok.get_vocab(), model_tok.special_tokens_map, rows=rows),
                               normalized_vocab(donor_vocab, donor_tok.special_tokens_map, rows=None),
                               donor_rows=donor_rows, out_rows=out_rows)
    if not match.shared and spec.method == "omp":
        raise PlanError(f"{model.name} and the donor {donor.name} share no token, and OMP builds new rows from "
                        "shared ones", hint="use method subword (the model's pieces of each token), mean or zero")
    if not match.copy:
        notes.append(f"{model.name} and the donor {donor.name} share no token: every row is approximated")
    hidden, donor_hidden = model.tensors[embed].shape[1], donor.tensors[donor_embed].shape[1]
    arch = (model.config.get("architectures") or [None])[0], (donor.config.get("architectures") or [None])[0]
    if hidden != donor_hidden or arch[0] != arch[1]:
        notes.append(f"the donor {donor.name} ({arch[1]}, hidden size {donor_hidden}) differs from {model.name} "
                     f"({arch[0]}, hidden size {hidden}): only its tokenizer"
                     + (" and its embeddings (in its own space, for OMP's coefficients)" if spec.method == "omp"
                        else "") + " are used")
    k = 0
    if spec.method == "omp" and match.approximate:
        shared = len(match.shared)
        if spec.k > shared:
            raise PlanError(f"k={spec.k} is more than the {shared} tokens {model.name} and {donor.name} share",
                            hint=f"pass k (-k) of at most {shared}, or another method (subword, mean, zero)")
        k = min(spec.k, donor_hidden)
        if k < spec.k:
            logger.info("k=%d capped at the donor's hidden size %d (more atoms cannot add anything)", spec.k, k)
    vocab_tensors: dict[str, VocabTensor] = {}
    uses_donor = spec.method == "omp"
    donor_head_info = donor.tensors[donor_head or donor_embed]
    vocab_tensors[embed] = VocabTensor(embed, 0, "embed", donor.tensors[donor_embed] if uses_donor else None)
    if head is not None:
        vocab_tensors[head] = VocabTensor(head, 0, "head", donor_head_info if uses_donor else None)
    for name, info in model.tensors.items():
        if name in vocab_tensors or LAYER_RE.match(name):
            continue
        axis = vocabulary_axis(name, info.shape, rows, is_embedding=False)
        if axis is not None:
            vocab_tensors[name] = VocabTensor(name, axis, "aux")
    order = sorted(model.tensors, key=lambda n: (model.tensors[n].file, model.tensors[n].start))
    return TransplantPlan(spec, model, donor, model_tok, donor_tok, match, vocab_tensors, order, k, notes, files)
