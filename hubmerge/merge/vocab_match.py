"""Which tokens of a donor vocabulary a model already has (tokenizer transplant, ``hubmerge tokensurgeon``).

Tokens are compared after a normalisation that lets tokenizers of different families agree (the one
mergekit-tokensurgeon 0.1.5 uses):

* a word-start marker is stripped and remembered: SentencePiece's ``▁hello`` and byte-level BPE's
  ``Ġhello`` both become ``(word-start, "hello")``;
* a special token becomes its role: Llama's ``</s>`` and GPT-2's ``<|endoftext|>`` as eos tokens are both
  ``(special, "eos_token")``; a token with several roles takes the first of bos, eos, unk, sep, pad, cls,
  mask;
* anything else is compared as written.

Each tokenizer's marker is the one most of its tokens start with (``▁`` or ``Ġ``; none when neither
occurs), which is what mergekit's per-class table gives for the tokenizers it knows and also works for
those it does not. Pure functions on vocabularies: loading tokenizers is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

WORD_START_MARKERS = ("▁", "Ġ")
SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# A normalised token: the text itself, ("word_start", text) or ("special", role).
NormalToken = Union[str, tuple[str, str]]


def word_start_marker(vocab: dict[str, int]) -> str | None:
    """The word-start marker most tokens of ``vocab`` begin with, or None when no token uses one."""
    counts = {m: sum(1 for t in vocab if t.startswith(m)) for m in WORD_START_MARKERS}
    best = max(WORD_START_MARKERS, key=lambda m: counts[m])
    return best if counts[best] else None


def normalize(token: str, roles: dict[str, str], marker: str | None) -> NormalToken:
    """``roles`` maps a special token's text to its role (see ``special_roles``)."""
    if marker is not None and token.startswith(marker):
        return ("word_start", token[len(marker):])
    role = roles.get(token)
    return ("special", role) if role is not None else token


def special_roles(special_tokens: dict[str, str]) -> dict[str, str]:
    """Token text -> role, from a tokenizer's ``special_tokens_map``; the first role (in SPECIAL_ROLES
    order) wins for a token that has several (pad = eos is common)."""
    out: dict[str, str] = {}
    for role in SPECIAL_ROLES:
        text = special_tokens.get(role)
        if isinstance(text, str) and text not in out:
            out[text] = role
    return out


def normalized_vocab(vocab: dict[str, int], special_tokens: dict[str, str], *, rows: int | None = None
                     ) -> dict[NormalToken, int]:
    """Normalised token -> id, keeping only ids below ``rows`` (tokens the embedding has a row for). Two
    tokens that normalise alike (a rare clash) keep the lower id."""
    marker = word_start_marker(vocab)
    roles = special_roles(special_tokens)
    out: dict[NormalToken, int] = {}
    for token, index in sorted(vocab.items(), key=lambda kv: kv[1]):
        if rows is not None and index >= rows:
            continue
        out.setdefault(normalize(token, roles, marker), index)
    return out


def display(token: NormalToken) -> str:
    """How a normalised token reads in messages and cards."""
    if isinstance(token, tuple):
        return f"<{token[1]}>" if token[0] == "special" else "▁" + token[1]
    return token


@dataclass(frozen=True)
class VocabMatch:
    """Where each output row (the donor's token ids) comes from.

    ``copy``: (output id, model row) for tokens the model has; ``approximate``: output ids of tokens it
    lacks that the donor has an embedding row for; every other output row is zero."""

    rows: int
    copy: tuple[tuple[int, int], ...]
    approximate: tuple[int, ...]
    shared: tuple[tuple[int, int], ...]  # (donor row, model row) of shared tokens, in donor id order

    @property
    def zero_rows(self) -> int:
        return self.rows - len(self.copy) - len(self.approximate)


def match_vocabularies(model: dict[NormalToken, int], donor: dict[NormalToken, int], *, donor_rows: int,
                       out_rows: int) -> VocabMatch:
    """``model``/``donor``: normalised vocabularies (model ids already limited to its embedding rows);
    ``donor_rows``: rows of the donor's embedding (a token past them cannot be approximated from it);
    ``out_rows``: rows of the output (the donor tokenizer's size)."""
    copy, approximate, shared = [], [], []
    for token, out_id in sorted(donor.items(), key=lambda kv: kv[1]):
        row = model.get(token)
        if row is not None:
            copy.append((out_id, row))
            if out_id < donor_rows:
                shared.append((out_id, row))
        elif out_id < donor_rows:
            approximate.append(out_id)
    return VocabMatch(out_rows, tuple(copy), tuple(approximate), tuple(shared))
