"""Random methods (DARE, DELLA, Arcee Fusion sampling): statistics and determinism."""

from __future__ import annotations

import math

import pytest
import torch

from hubmerge.merge.methods import _sampling, get_method
from hubmerge.merge.methods import sparsify as sp


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def nonzero_delta(n: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    x = torch.randn(n, generator=g)
    return (x + torch.sign(x) * 0.1).to(dtype)  # bounded away from 0, so "kept" means "!= 0"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("density", [0.1, 0.53, 0.9])
def test_dare_keep_rate_is_binomial(dtype, density):
    n = 200_000
    kept = int((sp.bernoulli(nonzero_delta(n, dtype), density, generator=gen(1)) != 0).sum())
    p = density  # the density itself (to 6e-8), not its bf16 rounding as mergekit's bf16 draw
    assert abs(kept - n * p) < 6 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rescale_preserves_the_l1_norm(dtype):
    delta = nonzero_delta(100_000, dtype, seed=2)
    before = delta.double().abs().sum()
    for out in (sp.bernoulli(delta.clone(), 0.3, rescale=True, generator=gen(3)),
                sp.della_magprune(delta.view(100, 1000).clone(), 0.4, 0.2, rescale=True, generator=gen(3)).flatten(),
                sp.magnitude(delta.clone(), 0.25, rescale=True)):
        assert 0 < (out != 0).float().mean() < 0.5
        rtol = 1e-4 if dtype == torch.float32 else 2e-2
        assert math.isclose(out.double().abs().sum(), before, rel_tol=rtol)
        kept = out != 0
        ratio = (out[kept].double() / delta[kept].double())
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=rtol)  # one common scale factor


def test_della_keep_probability_follows_the_magnitude_rank():
    rows, cols, density, eps = 4000, 50, 0.5, 0.3
    g = gen(4)
    magnitudes = torch.stack([torch.randperm(cols, generator=g) + 1.0 for _ in range(rows)])
    signs = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0)
    delta = magnitudes * signs
    kept = sp.della_magprune(delta.clone(), density, eps, generator=gen(5)) != 0
    rate = torch.zeros(cols)
    for r in range(1, cols + 1):
        rate[r - 1] = kept[magnitudes == r].float().mean()
    expected = density - eps + 2 * eps * torch.arange(cols) / (cols - 1)
    sd = torch.sqrt(expected * (1 - expected) / rows)
    assert ((rate - expected).abs() < 6 * sd).all()
    assert torch.corrcoef(torch.stack([rate, torch.arange(cols, dtype=torch.float32)]))[0, 1] > 0.95
    one_d = sp.della_magprune(delta[0].clone(), density, eps, generator=gen(6))
    assert one_d.shape == (cols,)


def test_della_rejects_epsilon_outside_density_bounds():
    with pytest.raises(ValueError, match="epsilon"):
        sp.della_magprune(torch.randn(10, 10), 0.9, 0.15, generator=gen(0))
    x = torch.randn(10, 10)
    assert torch.equal(sp.della_magprune(x.clone(), 1.0, 0.5), x)  # density >= 1: untouched, not checked
    assert not sp.della_magprune(x.clone(), 0.0, 0.5).any()


def test_full_density_draws_nothing():
    g = gen(7)
    state = g.get_state()
    x = torch.randn(1000)
    assert torch.equal(sp.bernoulli(x.clone(), 1.0, rescale=True, generator=g), x)
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_same_seed_same_output_other_seed_other_mask(name):
    g = gen(8)
    base = torch.randn(64, 128, generator=g).bfloat16()
    others = [(base.float() + 0.01 * torch.randn(64, 128, generator=g)).bfloat16() for _ in range(2)]
    func = get_method(name).func
    kwargs = {"weights": [0.6, 0.4], "densities": [0.5, 0.5]}
    a = func(base, others, generator=gen(11), **kwargs)
    b = func(base, others, generator=gen(11), **kwargs)
    c = func(base, others, generator=gen(12), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # two tensors with identical data but different seeds (the executor seeds per tensor name) differ too
    assert not torch.equal(func(base, others, generator=gen(13), **kwargs), a)


def test_arcee_fusion_sampling_is_seeded_and_close_to_exact_quantiles():
    g = gen(9)
    base = torch.randn(1200, 1000, generator=g)
    other = base + 0.3 * torch.randn(1200, 1000, generator=g)
    func = get_method("arcee_fusion").func
    a = func(base, [other], generator=gen(1))
    assert torch.equal(a, func(base, [other], generator=gen(1)))
    b = func(base, [other], generator=gen(2))
    took_a, took_b = a != base, b != base
    assert 0 < took_a.float().mean() < 0.5
    assert (took_a ^ took_b).float().mean() < 0.01  # a different sample moves the threshold only slightly


def test_keep_mask_is_a_function_of_the_generator_state_only():
    shape = (3, _sampling._CHUNK + 1000)  # several chunks, the last one short
    a = _sampling.keep_mask(0.3, shape, gen(21))
    assert a.shape == shape and a.dtype == torch.bool
    assert torch.equal(a, _sampling.keep_mask(0.3, shape, gen(21)))
    assert not torch.equal(a, _sampling.keep_mask(0.3, shape, gen(22)))
    g = gen(21)
    first, second = _sampling.keep_mask(0.3, shape, g), _sampling.keep_mask(0.3, shape, g)
    assert torch.equal(first, a) and not torch.equal(second, a)  # the generator advances
    flat = a.flatten()
    chunk = _sampling._CHUNK
    assert not torch.equal(flat[:chunk], flat[chunk:2 * chunk])  # each chunk is its own stream


@pytest.mark.parametrize("p", [0.0, 2.0**-24, 0.125, 0.3125, 0.5, 0.71875, 1.0 - 2.0**-24, 1.0])
def test_keep_mask_number_and_per_element_probabilities_agree(p):
    """A number ``p`` and a tensor full of ``p`` (exact in float32) threshold the same integers."""
    shape = (1000, 517)
    by_number = _sampling.keep_mask(p, shape, gen(23))
    by_tensor = _sampling.keep_mask(torch.full(shape, p), shape, gen(23))
    assert torch.equal(by_number, by_tensor)
    n = by_number.numel()
    kept = int(by_number.sum())
    if p in (0.0, 1.0):
        assert kept == n * p
    else:
        assert abs(kept - n * p) < 6 * math.sqrt(n * p * (1 - p)) + 1


def test_keep_mask_rates_follow_per_element_probabilities():
    rows = 20_000
    probs = torch.linspace(0.05, 0.95, 19).repeat(rows, 1)
    kept = _sampling.keep_mask(probs, probs.shape, gen(24)).float().mean(dim=0)
    expected = probs[0]
    assert ((kept - expected).abs() < 6 * torch.sqrt(expected * (1 - expected) / rows)).all()
    # neighbouring columns are not correlated (a weak generator or a reused stream would show here)
    m = _sampling.keep_mask(0.5, (rows, 2), gen(25)).float()
    assert abs(float(torch.corrcoef(m.T)[0, 1])) < 6 / math.sqrt(rows)
