"""Registry metadata: complete, documented, and consistent with mergekit 0.1.5's method specs."""

from __future__ import annotations

import inspect

import pytest
import torch

from hubmerge.merge.methods import REQUIRED, all_methods, get_method

EXPECTED = {
    "linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties", "dare_ties", "dare_linear",
    "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce", "model_stock", "nearswap", "arcee_fusion",
    "passthrough", "ram", "ramplus_tl",
}
RANDOM = {"dare_ties", "dare_linear", "della", "della_linear", "arcee_fusion"}


def test_every_method_is_registered_and_documented():
    methods = all_methods()
    assert EXPECTED <= set(methods)
    for name, m in methods.items():
        assert m.name == name
        assert m.summary and m.summary.endswith("."), name
        assert m.paper.startswith("https://"), name
        assert m.func.__doc__, name
        assert m.random == (name in RANDOM), name


def test_signatures_accept_the_declared_keywords():
    for name, m in all_methods().items():
        sig = inspect.signature(m.func)
        params = list(sig.parameters)
        assert params[:2] == ["base", "others"], name
        for p in m.params:
            assert p.keyword in sig.parameters, (name, p.keyword)
            if not p.required:
                assert sig.parameters[p.keyword].kind is inspect.Parameter.KEYWORD_ONLY, (name, p.keyword)
        assert ("generator" in sig.parameters) == m.random, name


def test_della_check_names_the_parameter():
    m = get_method("della")
    m.check({"density": 0.5, "epsilon": 0.2, "weight": 1.0})
    m.check({"density": 1.0, "epsilon": 0.5})  # mergekit only checks 0 < density < 1
    m.check({"density": 0.0, "epsilon": 0.5})
    for bad in ({"density": 0.9, "epsilon": 0.1}, {"density": 0.1, "epsilon": 0.1}, {"density": 0.5}):
        params = {"epsilon": 0.5, **bad} if "epsilon" not in bad else bad
        with pytest.raises(ValueError, match="epsilon"):
            m.check(params)
    with pytest.raises(ValueError, match="epsilon"):
        get_method("della_linear").check({"densities": [0.5, 0.9], "epsilons": [0.1, 0.15]})


# ---- against mergekit's own registry -----------------------------------------------------------------

try:
    import mergekit.merge_methods as mergekit_methods
    from mergekit.merge_methods.base import MISSING, ParameterScope
except ImportError:  # pragma: no cover - mergekit is a test-only dependency
    mergekit_methods = None

needs_mergekit = pytest.mark.skipif(mergekit_methods is None, reason="mergekit 0.1.5 is not installed")


def _mergekit_specs():
    return {m.spec.name: m.spec for m in mergekit_methods.registered_methods()}


@pytest.mark.mergekit
@needs_mergekit
def test_same_method_names_as_mergekit():
    assert set(_mergekit_specs()) == set(all_methods())


@pytest.mark.mergekit
@needs_mergekit
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_and_contract_match_mergekit(name):
    spec = _mergekit_specs()[name]
    ours = get_method(name)
    assert {p.name for p in spec.parameters} == set(ours.param_names)
    for theirs in spec.parameters:
        p = ours.param(theirs.name)
        if theirs.scope == ParameterScope.SHARED:
            assert p.scope == "shared", theirs.name
        else:
            assert p.scope == "model", theirs.name
            assert p.includes_base == (theirs.scope == ParameterScope.INPUT), theirs.name
        if theirs.default is MISSING:
            assert p.default is REQUIRED, theirs.name
        else:
            assert p.default == theirs.default and type(p.default) is type(theirs.default), theirs.name
            assert theirs.validate(p.default) == p.default
        assert theirs.validate(p.type(1)) == p.type(1) or p.type is bool, theirs.name
    assert ours.base == spec.contract.base.value
    min_inputs = max(spec.contract.min_inputs, (spec.contract.min_non_base or 0))
    assert ours.min_inputs == min_inputs
    if spec.contract.max_inputs is not None:
        assert ours.max_inputs == spec.contract.max_inputs
    elif spec.contract.max_non_base is not None:
        assert ours.max_inputs == spec.contract.max_non_base + 1  # plus the optional base
    else:
        assert ours.max_inputs is None
    if spec.reference_url:
        assert ours.paper == spec.reference_url


@pytest.mark.parametrize("name", ["ties", "dare_ties", "della", "breadcrumbs"])
def test_sparsifying_methods_release_executor_inputs_and_leave_a_callers_list(name):
    """With ``ReleasableInputs`` (what the executor passes) each input is dropped once its delta exists, so its
    memory goes before the costly selection; a caller's own list is never touched; the result is the same."""
    import weakref

    from hubmerge.merge.methods.registry import ReleasableInputs

    g = torch.Generator().manual_seed(3)
    base = torch.randn(64, 48, generator=g)
    kwargs = {"weights": [0.6, 0.4], "densities": [0.5, 0.5]}
    if get_method(name).random:
        kwargs["generator"] = None

    def run(others):
        if "generator" in kwargs:
            kwargs["generator"] = torch.Generator().manual_seed(9)
        return get_method(name).func(base, others, **kwargs)

    plain = [base + 0.01 * torch.randn(64, 48, generator=g) for _ in range(2)]
    originals = [t.clone() for t in plain]
    want = run(plain)
    assert all(a is not None and torch.equal(a, b) for a, b in zip(plain, originals))

    inputs = ReleasableInputs(t.clone() for t in originals)
    alive = [weakref.ref(t) for t in inputs]
    got = run(inputs)
    assert list(inputs) == [None, None] and all(r() is None for r in alive)
    assert torch.equal(got, want)
