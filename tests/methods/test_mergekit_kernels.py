"""Kernel-level differential tests: our method functions against mergekit 0.1.5's own implementations on the same
tensors, bitwise (``torch.equal`` and same dtype)."""

from __future__ import annotations

import pytest
import torch

from hubmerge.merge.methods import get_method
from hubmerge.merge.methods._chunks import spread_spans
from hubmerge.merge.methods._sampling import keep_mask

pytestmark = pytest.mark.mergekit
merge_methods = pytest.importorskip("mergekit.merge_methods", reason="mergekit 0.1.5 is not installed")


def theirs(name: str, base: torch.Tensor | None, others: list[torch.Tensor], params: dict) -> torch.Tensor:
    """mergekit's kernel on one tensor group (base first when there is one, as its graph adapter does)."""
    tensors = ([base] if base is not None else []) + list(others)
    return merge_methods.merge_tensors(tensors, name, parameters=params, base_index=0 if base is not None else None)


def ours(name: str, base: torch.Tensor | None, others: list[torch.Tensor], **kwargs) -> torch.Tensor:
    return get_method(name).func(base, list(others), **kwargs)


def assert_bitwise(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if not torch.equal(got, want):
        bad = (got != want) & ~(got.isnan() & want.isnan())
        assert not bad.any(), f"{int(bad.sum())} of {got.numel()} elements differ"


def make_inputs(shape, dtype, count: int, seed: int, *, ties: bool = False):
    """A base and ``count`` fine-tunes. ``ties``: deltas on a coarse grid, so many magnitudes are equal."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    if ties:
        others = [base + torch.randint(-12, 13, shape, generator=g) * 2.0**-9 for _ in range(count)]
    else:
        others = [base + 0.01 * torch.randn(shape, generator=g) for _ in range(count)]
    return base.to(dtype), [x.to(dtype) for x in others]


DTYPES = [torch.float32, torch.bfloat16]
SMALL_SHAPES = [(7,), (33, 17), (4, 6, 5)]
ALL_SHAPES = SMALL_SHAPES + [(512, 1024)]
W3, D3 = [0.5, 0.3, 0.7], [0.6, 0.3, 0.9]


def _gta_cases():
    yield "task_arithmetic", {"weights": W3}, {"weight": W3}
    yield "task_arithmetic", {"weights": W3, "normalize": True, "lam": 0.7}, \
        {"weight": W3, "normalize": True, "lambda": 0.7}
    # weights summing to zero: the divisor falls back to 1
    yield "task_arithmetic", {"weights": [0.5, -0.5, 0.0], "normalize": True}, \
        {"weight": [0.5, -0.5, 0.0], "normalize": True}
    yield "ties", {"weights": W3, "densities": D3}, {"weight": W3, "density": D3}
    yield "ties", {"weights": W3, "densities": [1.0, 0.0, 0.5], "rescale": True, "normalize": False, "lam": 1.3}, \
        {"weight": W3, "density": [1.0, 0.0, 0.5], "rescale": True, "normalize": False, "lambda": 1.3}
    yield "ties", {"weights": [1.0, -1.0, 1.0], "densities": [0.2, 0.2, 0.2]}, \
        {"weight": [1.0, -1.0, 1.0], "density": 0.2}
    for name in ("breadcrumbs", "breadcrumbs_ties"):
        yield name, {"weights": W3, "densities": D3, "gammas": [0.01, 0.1, 0.5]}, \
            {"weight": W3, "density": D3, "gamma": [0.01, 0.1, 0.5]}
        yield name, {"weights": W3, "densities": [0.0, 0.99, 0.4], "rescale": True, "normalize": True}, \
            {"weight": W3, "density": [0.0, 0.99, 0.4], "rescale": True, "normalize": True}


@pytest.mark.parametrize("ties", [False, True], ids=["spread", "ties"])
@pytest.mark.parametrize("shape", ALL_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_task_arithmetic_family(dtype, shape, ties):
    base, others = make_inputs(shape, dtype, 3, seed=len(shape) * 10 + ties, ties=ties)
    for name, kwargs, params in _gta_cases():
        assert_bitwise(ours(name, base, others, **kwargs), theirs(name, base, others, params))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_selection_methods_with_span_workers(dtype):
    """As the executor runs ties and breadcrumbs: one torch thread, the models sparsified on worker threads side
    by side (``spread_spans``). Same bits as mergekit, heavy ties included."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed, ties in ((1, True), (2, False)):
            base, others = make_inputs((384, 512), dtype, 3, seed=seed, ties=ties)
            for name, kwargs, params in _gta_cases():
                if name == "task_arithmetic":
                    continue
                with spread_spans(2):
                    got = ours(name, base, others, **kwargs)
                assert_bitwise(got, theirs(name, base, others, params))
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
def test_task_arithmetic_family_other_dtypes(dtype):
    base, others = make_inputs((300, 257), dtype, 3, seed=5, ties=True)
    for name, kwargs, params in _gta_cases():
        assert_bitwise(ours(name, base, others, **kwargs), theirs(name, base, others, params))


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float16, torch.float64], ids=str)
def test_linear_and_slerp(dtype, shape):
    base, others = make_inputs(shape, dtype, 2, seed=11)
    everything = [others[0], others[1], base]  # the implicit base comes last, as mergekit adds it
    assert_bitwise(ours("linear", None, everything, weights=[0.2, 0.5, 0.3]),
                   theirs("linear", None, everything, {"weight": [0.2, 0.5, 0.3]}))
    assert_bitwise(ours("linear", None, others, weights=[0.7, -0.1], normalize=False),
                   theirs("linear", None, others, {"weight": [0.7, -0.1], "normalize": False}))
    for t in (0.0, 0.35, 1.0):
        assert_bitwise(ours("slerp", base, others[:1], t=t), theirs("slerp", base, others[:1], {"t": t}))
    # colinear and antipodal pairs take the linear fallback
    for other in (base * 2, -base):
        assert_bitwise(ours("slerp", base, [other], t=0.25), theirs("slerp", base, [other], {"t": 0.25}))


@pytest.mark.parametrize("shape", SMALL_SHAPES + [(256, 300)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spherical_and_geometric_methods(dtype, shape):
    base, others = make_inputs(shape, dtype, 3, seed=21)
    two = others[:2]
    for kwargs in ({}, {"nuslerp_flatten": False}, {"nuslerp_flatten": False, "nuslerp_row_wise": True}):
        for b in (base, None):
            assert_bitwise(ours("nuslerp", b, two, weights=[0.3, 0.6], **kwargs),
                           theirs("nuslerp", b, two, {"weight": [0.3, 0.6], **kwargs}))
    assert_bitwise(ours("nuslerp", base, two, weights=[1.0, -1.0]),
                   theirs("nuslerp", base, two, {"weight": [1.0, -1.0]}))
    for b in (base, None):
        assert_bitwise(ours("multislerp", b, others, weights=W3), theirs("multislerp", b, others, {"weight": W3}))
        unnormalized = {"normalize_weights": False, "eps": 1e-6}
        assert_bitwise(ours("multislerp", b, others, weights=[1.0, 2.0, 0.5], **unnormalized),
                       theirs("multislerp", b, others, {"weight": [1.0, 2.0, 0.5], **unnormalized}))
    antipodal = [others[0], -others[0]]
    assert_bitwise(ours("multislerp", None, antipodal, weights=[1.0, 1.0]),
                   theirs("multislerp", None, antipodal, {"weight": [1.0, 1.0]}))
    everything = [*others, base]
    assert_bitwise(ours("karcher", None, everything), theirs("karcher", None, everything, {}))
    assert_bitwise(ours("karcher", None, everything, max_iter=3, tol=1e-3),
                   theirs("karcher", None, everything, {"max_iter": 3, "tol": 1e-3}))
    for fw in (False, True):
        assert_bitwise(ours("model_stock", base, others, filter_wise=fw),
                       theirs("model_stock", base, others, {"filter_wise": fw}))
    assert_bitwise(ours("nearswap", base, others[:1], t=0.004), theirs("nearswap", base, others[:1], {"t": 0.004}))
    assert_bitwise(ours("arcee_fusion", base, others[:1]), theirs("arcee_fusion", base, others[:1], {}))
    for topk in (1.0, 0.3, 0.0):
        assert_bitwise(ours("sce", base, others, select_topk=topk), theirs("sce", base, others, {"select_topk": topk}))
    assert_bitwise(ours("sce", base, others, int8_mask=True, select_topk=0.5),
                   theirs("sce", base, others, {"int8_mask": True, "select_topk": 0.5}))
    assert_bitwise(ours("ram", base, others, epsilon=0.004), theirs("ram", base, others, {"epsilon": 0.004}))
    assert_bitwise(ours("ramplus_tl", base, others, epsilon=0.004, r=0.3, alpha=0.5),
                   theirs("ramplus_tl", base, others, {"epsilon": 0.004, "r": 0.3, "alpha": 0.5}))
    assert_bitwise(ours("passthrough", None, others[:1], scales=[0.5]),
                   theirs("passthrough", None, others[:1], {"scale": 0.5}))
    assert_bitwise(ours("passthrough", None, others[:1], scales=[None]), theirs("passthrough", None, others[:1], {}))


def _bernoulli_drawing_our_masks(generator: torch.Generator):
    """A stand-in for ``torch.bernoulli`` that draws with our sampler from ``generator``: mergekit then masks with
    exactly the masks we draw, so everything around the draw (probabilities, masking, rescaling, consensus) is
    compared bitwise."""

    def bernoulli(probs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        assert not args and not kwargs
        flat = probs.flatten()
        constant = flat.numel() > 0 and bool((flat == flat[0]).all())
        p = float(flat[0]) if constant else probs  # DARE passes a constant; we pass the number itself
        return keep_mask(p, probs.shape, generator, probs.device).to(probs.dtype)

    return bernoulli


@pytest.mark.parametrize("shape", [(96, 200), (300,), (4, 20, 7)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float16], ids=str)
def test_random_methods_match_mergekit_given_the_same_masks(dtype, shape, monkeypatch):
    """Our masks are not mergekit's (its global-RNG ``torch.bernoulli`` is what we replace); with mergekit's draw
    swapped for ours, the outputs must be bitwise equal. Densities are exact in bf16, so mergekit's bf16
    probability tensor holds the very number we threshold."""
    base, others = make_inputs(shape, dtype, 3, seed=31, ties=True)
    d = [0.625, 0.3125, 0.5]
    cases = [
        ("dare_ties", {}, {}),
        ("dare_linear", {"normalize": True}, {"normalize": True}),
        ("dare_ties", {"rescale": False}, {"rescale": False}),
        ("della", {"epsilons": [0.1, 0.2, 0.05]}, {"epsilon": [0.1, 0.2, 0.05]}),
        ("della_linear", {}, {}),
    ]
    for name, kwargs, params in cases:
        with monkeypatch.context() as patch:
            patch.setattr(torch, "bernoulli", _bernoulli_drawing_our_masks(torch.Generator().manual_seed(1234)))
            want = theirs(name, base, others, {"weight": W3, "density": d, **params})
        got = ours(name, base, others, weights=W3, densities=d, generator=torch.Generator().manual_seed(1234), **kwargs)
        assert_bitwise(got, want)
        assert got.ne(0).any() and got.ne(base).any()


def test_arcee_fusion_sampling_matches_with_the_same_rng_state():
    base, others = make_inputs((1100, 1000), torch.float32, 1, seed=41)  # > 1M elements: quantiles are sampled
    torch.manual_seed(99)
    want = theirs("arcee_fusion", base, others, {})
    assert_bitwise(ours("arcee_fusion", base, others, generator=torch.Generator().manual_seed(99)), want)
