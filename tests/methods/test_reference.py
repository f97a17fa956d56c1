"""Each method against an independent, straightforward reference written here (float64 formulas, loops, a plain
argsort), plus edge cases. Exact where the computation is the same, tight tolerances otherwise."""

from __future__ import annotations

import math

import pytest
import torch

from hubmerge.merge.methods import get_method
from hubmerge.merge.methods import sparsify as sp

F64 = torch.float64


def run(name, base, others, **kwargs):
    return get_method(name).func(base, list(others), **kwargs)


def inputs(shape, dtype=F64, count=3, seed=0, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=F64)
    return base.to(dtype), [(base + scale * torch.randn(shape, generator=g, dtype=F64)).to(dtype) for _ in range(count)]


def close(got, want, dtype=F64):
    tol = {F64: (1e-10, 1e-12), torch.float32: (2e-5, 1e-6), torch.bfloat16: (3e-2, 1e-2), torch.float16: (5e-3, 1e-3)}
    rtol, atol = tol[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)


# ---- linear, passthrough ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_linear(dtype):
    base, others = inputs((5, 7), dtype)
    xs, ws = [*others, base], [0.2, 0.5, 0.1, 0.4]
    out = run("linear", None, xs, weights=ws)
    assert out.dtype == dtype
    want = sum(w * x.double() for w, x in zip(ws, xs))
    close(out, want / sum(ws), dtype)
    close(run("linear", None, xs, weights=ws, normalize=False), want, dtype)


def test_linear_zero_weight_sum_is_not_finite():
    _, others = inputs((10,), count=2)
    out = run("linear", None, others, weights=[1.0, -1.0])
    assert not torch.isfinite(out).any()  # mergekit divides by zero too


def test_passthrough():
    x = torch.randn(3, 4)
    assert run("passthrough", None, [x]) is x
    assert torch.equal(run("passthrough", None, [x], scales=[None]), x)
    assert torch.equal(run("passthrough", None, [x], scales=[0.5]), x * 0.5)
    with pytest.raises(ValueError):
        run("passthrough", None, [x, x])


# ---- spherical ---------------------------------------------------------------------------------------------------


def slerp_ref(t, a, b):
    a, b = a.double().flatten(), b.double().flatten()
    na = a.norm() if a.norm() > 1e-8 else torch.tensor(1.0, dtype=F64)
    nb = b.norm() if b.norm() > 1e-8 else torch.tensor(1.0, dtype=F64)
    d = torch.clamp((a / na) @ (b / nb), -1, 1)
    if abs(d) > 0.9995:
        return (1 - t) * a + t * b
    theta = torch.acos(d)
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(17,), (40, 30)], ids=str)
def test_slerp(dtype, shape):
    base, (other, *_) = inputs(shape, dtype, scale=1.0)
    for t in (0.0, 0.25, 0.8, 1.0):
        out = run("slerp", base, [other], t=t)
        assert out.dtype == dtype and out.shape == base.shape
        close(out.flatten(), slerp_ref(t, base, other), dtype)
    assert torch.equal(run("slerp", base, [other], t=0.0), base)
    assert torch.equal(run("slerp", base, [other], t=1.0), other)


def test_slerp_colinear_and_antipodal_interpolate_linearly():
    a = torch.randn(50, dtype=F64)
    for b in (3 * a, -a, a.clone()):
        close(run("slerp", a, [b], t=0.3), 0.7 * a + 0.3 * b)
    zero = torch.zeros(50, dtype=F64)
    # a zero norm counts as 1: the dot is 0, theta = pi/2, so the other model gets sin(0.3 pi/2)
    close(run("slerp", zero, [a], t=0.3), math.sin(0.3 * math.pi / 2) * a)


def test_nuslerp():
    base, (x1, x2, _) = inputs((12, 9), scale=1.0)
    t = 0.6 / (0.3 + 0.6)
    close(run("nuslerp", base, [x1, x2], weights=[0.3, 0.6]).flatten(),
          base.flatten() + slerp_ref(t, x1 - base, x2 - base))
    close(run("nuslerp", None, [x1, x2], weights=[0.3, 0.6]).flatten(), slerp_ref(t, x1, x2))
    rows = run("nuslerp", None, [x1, x2], weights=[1.0, 1.0], nuslerp_flatten=False)
    for r in range(12):
        close(rows[r], slerp_ref(0.5, x1[r], x2[r]))
    cols = run("nuslerp", None, [x1, x2], weights=[1.0, 3.0], nuslerp_flatten=False, nuslerp_row_wise=True)
    for c in range(9):
        close(cols[:, c], slerp_ref(0.75, x1[:, c], x2[:, c]))
    close(run("nuslerp", None, [x1, x2], weights=[1.0, -1.0]).flatten(), slerp_ref(0.5, x1, x2))  # zero sum: t=0.5
    with pytest.raises(ValueError):
        run("nuslerp", base, [x1], weights=[1.0])


def multislerp_ref(xs, ws, base=None, eps=1e-8):
    xs = [x.double().flatten() - (0 if base is None else base.double().flatten()) for x in xs]
    ws = torch.tensor(ws, dtype=F64) / sum(ws)
    norms = [x.norm() for x in xs]
    us = [x / (n + eps) for x, n in zip(xs, norms)]
    m = sum(w * u for w, u in zip(ws, us))
    m = m / m.norm()
    tangent = sum(w * (u - (u @ m) * m) for w, u in zip(ws, us))
    length = tangent.norm() + eps
    out = (m * torch.cos(length) + tangent * torch.sin(length) / length) * sum(w * n for w, n in zip(ws, norms))
    return out if base is None else out + base.double().flatten()


def test_multislerp():
    base, others = inputs((6, 11), scale=1.0)
    ws = [0.2, 0.5, 0.3]
    close(run("multislerp", None, others, weights=ws).flatten(), multislerp_ref(others, ws))
    close(run("multislerp", base, others, weights=ws).flatten(), multislerp_ref(others, ws, base))
    assert run("multislerp", base, others[:1], weights=[1.0]) is others[0]
    a = others[0]
    close(run("multislerp", None, [a, -a], weights=[1.0, 1.0]), 0.5 * a - 0.5 * a)  # antipodal pair: linear
    with pytest.raises(ValueError, match="zero"):
        run("multislerp", None, [a, -a, a - a], weights=[1.0, 1.0, 1.0])


def karcher_ref(xs, max_iter=10, tol=1e-5):
    xs = [x.double().flatten() for x in xs]
    norms = [x.norm() for x in xs]
    us = [x / n for x, n in zip(xs, norms)]
    m = sum(us) / len(us)
    m = m / m.norm()
    for _ in range(max_iter):
        tangent = torch.zeros_like(m)
        for u in us:
            d = torch.clamp(m @ u, -1, 1)
            theta = torch.acos(d)
            if theta > tol:
                tangent += theta / torch.sin(theta) * (u - d * m) / len(us)
        if tangent.norm() < tol:
            break
        m = torch.cos(tangent.norm()) * m + torch.sin(tangent.norm()) * tangent / tangent.norm()
        m = m / m.norm()
    return m * sum(norms) / len(norms)


def test_karcher():
    _, others = inputs((8, 5), scale=1.0)
    close(run("karcher", None, others).flatten(), karcher_ref(others))
    x = others[0]
    close(run("karcher", None, [x, x.clone(), x.clone()]), x)
    e1, e2 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 3.0], dtype=F64)
    close(run("karcher", None, [e1, e2]), 2.0 * torch.tensor([1.0, 1.0], dtype=F64) / math.sqrt(2))
    assert run("karcher", None, [x]) is x
    assert not run("karcher", None, [x * 0, x * 0]).any()


# ---- sparsifiers and the task arithmetic family ----------------------------------------------------------------


def topk_mask_ref(delta, density):
    """mergekit's rule, written plainly: argsort |delta| (float32) descending, keep the first max(1, int(d*n))."""
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=torch.bool)
    mask[torch.argsort(delta.abs().flatten().float(), descending=True)[:k]] = True
    return mask.view(delta.shape)


def crumbs_mask_ref(delta, density, gamma):
    n = delta.numel()
    target, top = int(density * n), int(gamma * n)
    bottom = max(0, n - target - top)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.sort(delta.abs().flatten().float()).indices[bottom:bottom + target]] = True
    return mask.view(delta.shape)


def l1_rescaled(delta, mask):
    kept = delta * mask
    before, after = delta.abs().sum(), kept.abs().sum()
    return kept if before < 1e-7 or after < 1e-7 else kept * (before / after)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16, F64], ids=str)
@pytest.mark.parametrize("shape", [(4097,), (300, 400)], ids=str)
def test_magnitude_selection_with_ties_at_the_boundary(dtype, shape):
    g = torch.Generator().manual_seed(7)
    delta = (torch.randint(-30, 31, shape, generator=g) * 2.0**-8).to(dtype)  # many equal magnitudes
    for density in (0.05, 0.5, 0.93):
        want = delta * topk_mask_ref(delta, density)
        assert torch.equal(sp.magnitude(delta.clone(), density), want)
        assert torch.equal(sp.magnitude(delta.clone(), density, rescale=True),
                           l1_rescaled(delta, topk_mask_ref(delta, density)))
    assert torch.equal(sp.magnitude(delta.clone(), 1.0, rescale=True), delta)
    assert torch.equal(sp.magnitude(delta.clone(), 0.0), torch.zeros_like(delta))
    assert int((sp.magnitude(delta.clone(), 1e-9) != 0).sum()) == 1  # at least one entry survives


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_breadcrumbs_selection(dtype):
    g = torch.Generator().manual_seed(8)
    delta = (torch.randint(-40, 41, (200, 300), generator=g) * 2.0**-9).to(dtype)
    for density, gamma in ((0.5, 0.01), (0.9, 0.2), (0.3, 0.0), (0.0, 0.1), (0.6, 1.0)):
        want = delta * crumbs_mask_ref(delta, density, gamma)
        assert torch.equal(sp.magnitude_outliers(delta.clone(), density, gamma), want)


def gta_ref(base, others, weights, masks, consensus, normalize, lam, rescale=False):
    deltas = []
    for x, w, m in zip(others, weights, masks):
        d = x.double() - base.double()
        d = (l1_rescaled(d, m) if rescale else d * m) if m is not None else d
        deltas.append(w * d)
    if consensus:
        elected = torch.where(sum(deltas) >= 0, 1.0, -1.0)
        agree = [torch.sign(d) == elected for d in deltas]
        merged = sum(torch.where(a, d, 0.0) for a, d in zip(agree, deltas))
        divisor = sum(a.double() * w for a, w in zip(agree, weights))
        divisor[divisor == 0] = 1
    else:
        merged = sum(deltas)
        divisor = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
    if normalize:
        merged = merged / divisor
    return base.double() + lam * merged


@pytest.mark.parametrize("shape", [(1000,), (60, 70)], ids=str)
def test_task_arithmetic_family_float64(shape):
    base, others = inputs(shape, seed=3)
    ws, ds, gs = [0.6, -0.2, 0.9], [0.5, 0.2, 1.0], [0.05, 0.1, 0.0]
    deltas = [x - base for x in others]
    top = [topk_mask_ref(d, dd) if dd < 1 else None for d, dd in zip(deltas, ds)]
    crumbs = [crumbs_mask_ref(d, dd, gg) if dd < 1 else None for d, dd, gg in zip(deltas, ds, gs)]
    nomask = [None] * 3
    close(run("task_arithmetic", base, others, weights=ws, lam=0.5),
          gta_ref(base, others, ws, nomask, False, False, 0.5))
    close(run("task_arithmetic", base, others, weights=ws, normalize=True),
          gta_ref(base, others, ws, nomask, False, True, 1.0))
    close(run("ties", base, others, weights=ws, densities=ds), gta_ref(base, others, ws, top, True, True, 1.0))
    close(run("ties", base, others, weights=ws, densities=ds, rescale=True, normalize=False, lam=2.0),
          gta_ref(base, others, ws, top, True, False, 2.0, rescale=True))
    close(run("breadcrumbs", base, others, weights=ws, densities=ds, gammas=gs),
          gta_ref(base, others, ws, crumbs, False, False, 1.0))
    close(run("breadcrumbs_ties", base, others, weights=ws, densities=ds, gammas=gs, normalize=True),
          gta_ref(base, others, ws, crumbs, True, True, 1.0))


def test_task_arithmetic_family_edge_cases():
    base, others = inputs((50, 20), dtype=torch.bfloat16)
    ws = [0.5, 0.5, 0.5]
    assert torch.equal(run("ties", base, others, weights=ws, densities=[0.0] * 3), base)  # nothing survives
    assert torch.equal(run("ties", base, [], weights=[]), base)
    zero_sum = run("task_arithmetic", base, others[:2], weights=[1.0, -1.0], normalize=True)
    close(zero_sum, gta_ref(base, others[:2], [1.0, -1.0], [None, None], False, False, 1.0), torch.bfloat16)
    full = run("ties", base, others, weights=ws, densities=[1.0] * 3)
    close(full, gta_ref(base, others, ws, [None] * 3, True, True, 1.0), torch.bfloat16)
    one_d = run("ties", base[0], [x[0] for x in others], weights=ws, densities=[0.3] * 3)
    assert one_d.shape == base[0].shape and one_d.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="density"):
        run("ties", base, others, weights=ws, densities=[0.5])


# ---- the others ------------------------------------------------------------------------------------------------


def test_model_stock():
    base, others = inputs((30, 40), seed=5)
    offsets = [(x - base).flatten() for x in others]
    cos = [torch.nn.functional.cosine_similarity(a, b, dim=0) for i, a in enumerate(offsets) for b in offsets[i + 1:]]
    c, n = sum(cos) / len(cos), len(others)
    t = n * c / (1 + (n - 1) * c)
    close(run("model_stock", base, others), t * sum(others) / n + (1 - t) * base)
    rows = run("model_stock", base, others, filter_wise=True)
    for r in (0, 17):
        o = [(x - base)[r] for x in others]
        cr = [torch.nn.functional.cosine_similarity(a, b, dim=0) for i, a in enumerate(o) for b in o[i + 1:]]
        cr = sum(cr) / len(cr)
        tr = n * cr / (1 + (n - 1) * cr)
        close(rows[r], tr * sum(x[r] for x in others) / n + (1 - tr) * base[r])
    x = others[0]
    d = x - base
    # two opposite offsets and one orthogonal-ish: 1 + (N-1) cos can vanish -> keep the base
    assert torch.equal(run("model_stock", base, [base + d, base - d]), base)


def test_nearswap():
    base, (x, *_) = inputs((100,), scale=0.01)
    t = 0.005
    w = torch.clamp(t / torch.clamp((base - x).abs(), min=1e-6), 0, 1)
    close(run("nearswap", base, [x], t=t), w * x + (1 - w) * base)
    assert torch.equal(run("nearswap", base, [base.clone()], t=t), base)


def test_arcee_fusion():
    base, (x, *_) = inputs((40, 64), seed=9, scale=0.5)
    p, q = torch.softmax(x, -1) + 1e-8, torch.softmax(base, -1) + 1e-8
    importance = (x - base).abs() * (p * torch.log(p / q)).sum(-1, keepdim=True)
    ordered = importance.flatten().sort().values
    q1, med, q3 = (ordered[int(f * (ordered.numel() - 1))] for f in (0.25, 0.5, 0.75))
    keep = importance >= med + 1.5 * (q3 - q1)
    assert 0 < keep.sum() < keep.numel()
    close(run("arcee_fusion", base, [x]), torch.where(keep, x, base))
    assert run("arcee_fusion", base.bfloat16(), [x.bfloat16()]).dtype == torch.float32  # mergekit's float mask


def test_sce():
    base, others = inputs((20, 30), seed=10)
    tvs = torch.stack([x - base for x in others])
    for topk in (1.0, 0.4):
        t = tvs.clone()
        if topk < 1:
            var = t.var(0, unbiased=False).flatten()
            keep = torch.zeros_like(var, dtype=torch.bool)
            keep[var.argsort(descending=True)[: int((var != 0).sum() * topk)]] = True
            t = t * keep.view(t.shape[1:])
        energy = t.pow(2).flatten(1).mean(1)
        w = (energy / energy.sum()).view(-1, 1, 1)
        elected = torch.where(t.sum(0) >= 0, 1.0, -1.0)
        ew = w * (torch.sign(t) == elected)
        close(run("sce", base, others, select_topk=topk), base + (t * ew).sum(0) / ew.sum(0).clamp(min=1e-6))


def test_ram_and_ramplus():
    base, others = inputs((500,), seed=12)
    eps = 0.008
    tvs = torch.stack([x - base for x in others])
    active = tvs.abs() > eps
    count = active.sum(0)
    merged = torch.zeros_like(base)
    for i in range(3):
        merged += torch.where(active[i] & (count == 1), tvs[i], 0.0)
        merged += torch.where(active[i] & (count > 1), tvs[i] / count.clamp(min=1), 0.0)
    close(run("ram", base, others, epsilon=eps), base + merged)
    merged = torch.zeros_like(base)
    for i in range(3):
        rho = (active[i] & (count > 1)).sum() / max((active[i] & (count == 1)).sum(), eps)
        # mergekit computes the boost in float32 (an int / int ratio), even for float64 tensors
        scale = torch.tensor(1 + 0.1 * min(max(float(rho), 0.0), 0.2), dtype=torch.float32).double()
        merged += torch.where(active[i] & (count == 1), tvs[i] * scale, 0.0)
        merged += torch.where(active[i] & (count > 1), tvs[i] / count.clamp(min=1), 0.0)
    close(run("ramplus_tl", base, others, epsilon=eps), base + merged)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_sum_over_models_is_torch_sum_bit_for_bit(dtype):
    """The fast per-position sum must equal ``torch.sum(dim=0)`` exactly, signed zeros, infinities, overflow
    and subnormals included (NaN results only as NaN: their payload is not specified)."""
    from hubmerge.merge.methods.task_arithmetic import sum_over_models

    g = torch.Generator().manual_seed(17)
    specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 65504.0, -65504.0, 1e-40, 3e38])
    for models in range(1, 10):
        for scale in (1e-6, 1e-2, 1.0, 1e4):
            x = torch.randn(models, 5003, generator=g) * scale
            where = torch.randint(0, 5003, (models, 200), generator=g)
            x.scatter_(1, where, specials[torch.randint(0, len(specials), where.shape, generator=g)])
            x = x.to(dtype)
            padded = torch.zeros(models, 5003 + 9, dtype=dtype)
            padded[:, 4:-5] = x
            for rows in (x, padded[:, 4:-5]):  # contiguous, and a column slice as the chunked kernels pass
                got, want = sum_over_models(rows), rows.sum(dim=0)
                assert got.dtype == want.dtype
                same = (got.view(-1).view(torch.uint8) == want.view(-1).view(torch.uint8)).view(*got.shape, -1).all(-1)
                assert (same | (got.isnan() & want.isnan())).all(), (models, scale)
