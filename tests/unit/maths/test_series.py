"""The mathematics against independent computations: autograd, numpy's Chebyshev module, dense sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.autograd import autograd_taylor

from packager.maths.series import bases
from packager.maths.series.activations import ACTIVATIONS, get_activation
from packager.maths.series.fit import Histogram, fit_taylor, fit_weighted
from packager.runtime.modeling_unswift import SeriesBasis

ORDER = 10


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_jets_match_autograd_to_order_10(name):
    activation = get_activation(name)
    x0 = torch.tensor([-6.0, -4.0, -1.3, -0.2, 0.0, 0.7, 2.5, 4.5, 6.0], dtype=torch.float64)
    jet = activation.taylor(x0, ORDER)
    reference = autograd_taylor(activation.value, x0, ORDER)
    assert torch.allclose(jet, reference, rtol=1e-9, atol=1e-12), (jet - reference).abs().max()


def test_unknown_activation_is_refused_with_the_supported_list():
    with pytest.raises(KeyError, match="silu"):
        get_activation("relu2")


def test_chebyshev_design_matches_numpy():
    t = torch.linspace(-1, 1, 101, dtype=torch.float64)
    ours = bases.design(t, 9, "chebyshev", "none")
    for n in range(10):
        coefficients = np.zeros(n + 1)
        coefficients[n] = 1
        assert np.allclose(ours[:, n].numpy(), np.polynomial.chebyshev.chebval(t.numpy(), coefficients), atol=1e-12)


@pytest.mark.parametrize("basis", ["chebyshev", "monomial"])
@pytest.mark.parametrize("extrapolation", ["none", "linear"])
def test_runtime_basis_matches_the_fitting_basis(basis, extrapolation):
    t = torch.linspace(-1.6, 1.6, 257, dtype=torch.float64)
    reference = bases.design(t, 8, basis, extrapolation)
    runtime = SeriesBasis(8, basis, extrapolation)(t.float()).double()
    scale = reference.abs().max()
    assert (runtime - reference).abs().max() / scale < 1e-5


def test_linear_extrapolation_is_continuous_and_tangent():
    for basis in ("chebyshev", "monomial"):
        eps = 1e-6
        for end in (-1.0, 1.0):
            t = torch.tensor([end - eps, end, end + eps], dtype=torch.float64)
            values = bases.design(t, 8, basis, "linear")
            inner_slope = (values[1] - values[0]) / eps
            outer_slope = (values[2] - values[1]) / eps
            assert torch.allclose(inner_slope, outer_slope, rtol=1e-3, atol=1e-3)


def _histogram(samples: torch.Tensor, bins: int = 256) -> Histogram:
    lo, hi = samples.min(-1).values, samples.max(-1).values
    index = ((samples - lo[:, None]) / (hi - lo)[:, None] * bins).long().clamp(0, bins - 1)
    counts = torch.zeros(samples.shape[0], bins, dtype=torch.float64).scatter_add_(1, index, torch.ones_like(samples))
    return Histogram(lo, hi, counts)


def _distributions() -> torch.Tensor:
    """Synthetic pre-activations: narrow, wide, shifted, heavy-tailed (Student t, 3 dof), massive outliers."""
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    normal = torch.randn(5, n, generator=gen, dtype=torch.float64)
    with torch.random.fork_rng():  # Chi2 draws from the global generator: pin it too
        torch.manual_seed(0)
        chi = torch.distributions.Chi2(torch.tensor(3.0, dtype=torch.float64)).sample((n,))
    student = torch.randn(n, generator=gen, dtype=torch.float64) / (chi / 3).sqrt()
    rows = [normal[0] * 0.5, normal[1] * 2.0, normal[2] * 1.5 - 2.5, student * 1.2, normal[4]]
    rows[4][:20] = 40.0  # a few massive activations far outside the bulk
    return torch.stack(rows)


def _true_rms_error(fit, samples, activation):
    return ((fit(samples) - activation.value(samples)) ** 2).mean(-1).sqrt()


def test_weighted_fit_accuracy_on_synthetic_distributions_is_pinned():
    activation = get_activation("silu")
    samples = _distributions()
    histogram = _histogram(samples)
    fit = fit_weighted(activation, histogram, 8)
    error = _true_rms_error(fit, samples, activation)
    # Pinned against the exact activation evaluated in float64 on every sample (not on bin centres).
    # Deterministic (seeded samples): a change of the fitting method shows up here.
    assert error.tolist() == pytest.approx([1.14e-5, 3.39e-3, 2.68e-3, 6.55e-3, 1.02e-3], rel=0.05)
    # The histogram estimate of the error tracks the true error (it drives channel selection).
    assert torch.allclose(fit.error, error, rtol=0.1)


def test_weighted_fit_beats_taylor_and_does_not_blow_up_outside_the_interval():
    activation = get_activation("silu")
    samples = _distributions()
    histogram = _histogram(samples)
    weighted = fit_weighted(activation, histogram, 8)
    taylor = fit_taylor(activation, histogram.lo, histogram.hi, 8, normalise=False, histogram=histogram)
    assert (_true_rms_error(weighted, samples, activation) < _true_rms_error(taylor, samples, activation)).all()
    # Held-out values beyond the calibrated range: the linear continuation keeps the error ~ linear.
    beyond = histogram.hi.unsqueeze(-1) + torch.linspace(0.0, 3.0, 31, dtype=torch.float64)
    error = (weighted(beyond) - activation.value(beyond)).abs().max(-1).values
    assert (error < 0.1 + 0.05 * (histogram.hi - histogram.lo)).all(), error


@pytest.mark.parametrize("name", ["gelu", "gelu_pytorch_tanh"])
def test_weighted_fit_of_gelu_family(name):
    activation = get_activation(name)
    samples = _distributions()[:3]
    fit = fit_weighted(activation, _histogram(samples), 8)
    assert (_true_rms_error(fit, samples, activation) < 2e-2).all()


def test_taylor_fit_is_the_paper_series():
    activation = get_activation("silu")
    lo = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    hi = torch.tensor([1.0, 2.5], dtype=torch.float64)
    fit = fit_taylor(activation, lo, hi, 6, normalise=False)
    centre = (lo + hi) / 2
    assert torch.allclose(fit.centre, centre)
    assert torch.allclose(fit.coefficients, activation.taylor(centre, 6))
    g = torch.stack([torch.linspace(-1, 1, 11), torch.linspace(0.5, 2.5, 11)]).double()
    dense = sum(fit.coefficients[:, n : n + 1] * (g - centre[:, None]) ** n for n in range(7))
    assert torch.allclose(fit(g), dense)


def test_weighted_fits_are_bit_identical_on_one_thread_and_several():
    from packager.maths.series.fit import _CHANNEL_BLOCK, fit_weighted_orders

    generator = torch.Generator().manual_seed(3)
    channels = 2 * _CHANNEL_BLOCK + 37  # three blocks: spread over the threads when there are several
    lo = -1.0 - 4.0 * torch.rand(channels, generator=generator)
    hi = 1.0 + 4.0 * torch.rand(channels, generator=generator)
    histogram = Histogram(lo, hi, torch.randint(0, 40, (channels, 256), generator=generator).float())
    activation = get_activation("silu")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = fit_weighted_orders(activation, histogram, (8, 7, 16))
        torch.set_num_threads(2)
        several = fit_weighted_orders(activation, histogram, (8, 7, 16))
        assert torch.get_num_threads() == 2  # restored after the blocks ran one per thread
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(single, several, strict=True):
        for name in ("centre", "half_width", "coefficients", "error"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
