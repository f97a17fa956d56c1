"""Re-indexing vocabulary-axis tensors (embeddings, output heads, logit biases) onto the output tokenizer.

Planned once per tensor from the permutations, applied in the executor's read path to the tensors just
read, before the merge method sees them. Fill rules for a token some input lacks (mergekit 0.1.5):

1. a ``tokenizer.tokens`` rule for it: zero, the row some model has for it, or a model's row for
   another token (``model_token``); with ``force: true`` the rule also replaces rows models do have;
2. else, if only one input has it: that input's row;
3. else, if the group's base model has it: the base's row;
4. else the mean of the rows of the inputs that have it (summed in input order, then divided);
5. no input has it: zeros.

Rows added by ``pad_to_multiple_of`` take, per input, the mean of its re-indexed token rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from hubmerge.errors import PlanError
from hubmerge.merge.tokenizer.build import OutputTokenizer

# Names that hold positions or normalisation, not tokens, even when a dimension happens to equal the vocab.
_NOT_VOCABULARY = ("norm", "position", "wpe", "pos_emb", "rotary")


def vocabulary_axis(name: str, shape: tuple[int, ...], vocab_rows: int, *, is_embedding: bool) -> int | None:
    """The axis of ``shape`` that runs over tokens, from the header alone, or None.

    Embedding and output-head matrices have the vocabulary first. Any other (non-layer) tensor counts when
    one of its dimensions equals the model's vocabulary size (e.g. ``lm_head.bias``, ``final_logits_bias``).
    """
    if is_embedding:
        return 0 if shape and shape[0] == vocab_rows else None
    if any(word in name for word in _NOT_VOCABULARY):
        return None
    matches = [axis for axis, n in enumerate(shape) if n == vocab_rows]
    return matches[0] if matches else None


@dataclass(eq=False)
class VocabAlignment:
    """How one output tensor's inputs are re-indexed.

    Everything is indexed by the inputs' *group* order (the order the spec lists the models, which is
    also the order means are summed in); ``order[j]`` is the group position of the PlannedTensor's input j.
    """

    axes: tuple[int, ...]
    rows: int  # output rows on the vocabulary axis (padded)
    tokens: int  # rows that are real tokens
    keep: tuple[torch.Tensor, ...]  # per input: int64 [tokens], the input row a token keeps, or -1
    fill_ids: torch.Tensor  # token ids that get a computed row (some input lacks them, or forced)
    copy: torch.Tensor  # int64 [n, 3]: (position in fill_ids, input, input row)
    mean_pos: torch.Tensor  # int64 [m]: positions in fill_ids that are means ...
    mean_rows: torch.Tensor  # int64 [m, inputs]: ... of these input rows (-1: input lacks the token)
    order: tuple[int, ...] = ()
    digest: str = ""

    def out_shape(self, shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
        return shape[:axis] + (self.rows,) + shape[axis + 1:]

    def apply(self, tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """Re-index ``tensors`` (in PlannedTensor input order); results in the same order, as ``dtype``."""
        grouped: list[torch.Tensor] = [None] * len(tensors)  # type: ignore[list-item]
        for j, g in enumerate(self.order or range(len(tensors))):
            grouped[g] = tensors[j]
        views = [t.movedim(a, 0).to(dtype) for t, a in zip(grouped, self.axes)]
        rest = views[0].shape[1:]
        fill = torch.zeros((len(self.fill_ids), *rest), dtype=dtype)
        for k in self.copy[:, 1].unique().tolist():
            sel = self.copy[self.copy[:, 1] == k]
            fill[sel[:, 0]] = views[k][sel[:, 2]]
        if len(self.mean_pos):
            # Same arithmetic as one token at a time: 0 + row + row ..., then divided by the count.
            acc = torch.zeros((len(self.mean_pos), *rest), dtype=dtype)
            for k, view in enumerate(views):
                sel = (self.mean_rows[:, k] >= 0).nonzero().squeeze(1)
                acc[sel] = acc[sel] + view[self.mean_rows[sel, k]]
            counts = (self.mean_rows >= 0).sum(1)
            for c in counts.unique().tolist():
                acc[counts == c] /= c
            fill[self.mean_pos] = acc
        out = []
        for view, keep, axis in zip(views, self.keep, self.axes):
            new = torch.zeros((self.rows, *rest), dtype=dtype)
            new[self.fill_ids] = fill
            present = (keep >= 0).nonzero().squeeze(1)
            new[present] = view[keep[present]]
            if self.rows > self.tokens:
                new[self.tokens:] = torch.mean(new[:self.tokens], dim=0)
            out.append(new.movedim(0, axis))
        return [out[g] for g in (self.order or range(len(tensors)))]


def plan_alignment(tok: OutputTokenizer, *, tensor: str, models: list[int], names: list[str], axes: list[int],
                   shapes: list[tuple[int, ...]], base: int | None, order: list[int]) -> VocabAlignment:
    """``models``/``names``/``axes``/``shapes``: the inputs in group (spec) order; ``base``: the group's base
    model index when it is one of them; ``order[j]``: group position of the PlannedTensor's input j."""
    ntok = len(tok.vocab)
    perms = []
    for m, axis, shape in zip(models, axes, shapes):
        perm = tok.permutations[m]
        if perm.numel() and int(perm.max()) >= shape[axis]:
            raise PlanError(f"tensor '{tensor}' of {names[models.index(m)]} has {shape[axis]} rows, fewer than "
                            "its tokenizer's vocabulary", hint="the model's config vocab_size and weights disagree")
        perms.append(perm)
    present = torch.stack([p >= 0 for p in perms])  # [inputs, tokens]
    counts = present.sum(0)
    forced = torch.zeros(ntok, dtype=torch.bool)
    rules = {}
    for o in tok.overrides:
        tid = tok.vocab[o.token]
        rules[tid] = o
        if o.force:
            forced[tid] = True
    needs = ((counts < len(models)) | forced).nonzero().squeeze(1).tolist()
    base_pos = models.index(base) if base is not None and base in models else None

    copy: list[tuple[int, int, int]] = []
    mean: list[tuple[int, list[int]]] = []
    for pos, tid in enumerate(needs):
        rule = rules.get(tid)
        if rule is not None:
            src = _rule_source(tok, rule, tid, models, names, perms, axes, shapes, tensor)
            if src is not None:
                copy.append((pos, *src))
            continue
        have = present[:, tid].nonzero().squeeze(1).tolist()
        if len(have) == 1:
            copy.append((pos, have[0], int(perms[have[0]][tid])))
        elif not have:
            continue  # zeros: no input has this token
        elif base_pos is not None and base_pos in have:
            copy.append((pos, base_pos, int(perms[base_pos][tid])))
        else:
            mean.append((pos, [int(p[tid]) for p in perms]))
    keep = tuple(torch.where(forced, torch.full_like(p, -1), p) for p in perms)
    h = hashlib.sha256(repr((axes, order, tok.rows, ntok, needs, copy, mean)).encode())
    for k in keep:
        h.update(k.numpy().tobytes())
    return VocabAlignment(
        tuple(axes), tok.rows, ntok, keep, torch.tensor(needs, dtype=torch.int64),
        torch.tensor(copy, dtype=torch.int64).reshape(-1, 3),
        torch.tensor([pos for pos, _ in mean], dtype=torch.int64),
        torch.tensor([rows for _, rows in mean], dtype=torch.int64).reshape(-1, len(models)),
        tuple(order), h.hexdigest())


def _rule_source(tok, rule, tid, models, names, perms, axes, shapes, tensor) -> tuple[int, int] | None:
    """(input, row) a ``tokenizer.tokens`` rule takes its row from; None for zeros."""
    if rule.kind == "zero":
        return None
    if rule.kind is None:
        raise PlanError(f"token {rule.token!r} is missing from some models and its tokenizer.tokens entry "
                        "gives no source", hint="add source: {kind: zero} or a model that has the token")
    model_names = {i: n for i, n in zip(models, names)}
    index = next((i for i in models if tok.model_refs[i] == rule.model), None)
    if index is None:
        raise PlanError(f"{rule.yaml_path}: the row for {rule.token!r} comes from {rule.model}, which is not an "
                        f"input of tensor '{tensor}'", hint="take it from a model being merged")
    k = models.index(index)
    if rule.kind == "model":
        row = int(perms[k][tid])
        if row < 0:
            raise PlanError(f"{rule.yaml_path}: {model_names[index]} has no token {rule.token!r}",
                            hint="use {kind: model_token, model: ..., token: ...} to take another token's row")
        return k, row
    row = rule.source_token_id
    if row is None:
        own = tok.original_vocabs.get(index, {})
        if rule.source_token not in own:
            raise PlanError(f"{rule.yaml_path}: token {rule.source_token!r} is not in {model_names[index]}'s "
                            "tokenizer")
        row = own[rule.source_token]
    if not 0 <= row < shapes[k][axes[k]]:
        raise PlanError(f"{rule.yaml_path}: token id {row} is out of range for {model_names[index]} "
                        f"({shapes[k][axes[k]]} rows)")
    return k, row
