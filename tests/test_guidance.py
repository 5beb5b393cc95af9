"""Guidance maths: scale 0 is the identity, linearity, eps/x0 equivalence, AND weights, windows."""

import math

import torch

from asag_lib import guidance


def _t(seed, shape=(2, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_scale_zero_returns_the_very_same_tensor():
    guided, cond, weak = _t(0), _t(1), _t(2)
    out = guidance.combine(guided, cond, weak, 0.0, rescale=0.7)
    assert out is guided


def test_combine_is_the_formula_and_linear_in_scale():
    guided, cond, weak = _t(0), _t(1), _t(2)
    one = guidance.combine(guided, cond, weak, 1.0)
    assert torch.equal(one, guided + (cond - weak))
    three = guidance.combine(guided, cond, weak, 3.0)
    torch.testing.assert_close(three - guided, 3 * (one - guided))


def test_combine_in_x0_space_equals_combine_in_eps_space():
    x, sigma = _t(9), 2.5
    eps_cfg, eps_c, eps_w = _t(0), _t(1), _t(2)
    to_x0 = lambda eps: x - sigma * eps  # noqa: E731
    from_eps = to_x0(guidance.combine(eps_cfg, eps_c, eps_w, 1.5))
    from_x0 = guidance.combine(to_x0(eps_cfg), to_x0(eps_c), to_x0(eps_w), 1.5)
    torch.testing.assert_close(from_eps, from_x0, rtol=1e-12, atol=1e-12)


def test_rescale_matches_reference_std_at_phi_one_and_is_identity_at_zero():
    x, ref = _t(0) * 3, _t(1)
    full = guidance.rescale_like(x, ref, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), ref.std(dim=(1, 2, 3)))
    assert guidance.rescale_like(x, ref, 0.0) is x
    half = guidance.rescale_like(x, ref, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * x)


def test_per_image_is_the_and_weighted_mean():
    rows = _t(3, (5, 4, 2, 2))
    conds_list = [[(0, 1.0)], [(1, 0.5), (2, 2.0)], [(3, 1.0), (4, -3.0)]]
    out = guidance.per_image(rows, conds_list)
    torch.testing.assert_close(out[0], rows[0])
    torch.testing.assert_close(out[1], 0.2 * rows[1] + 0.8 * rows[2])
    # weights summing to <= 0 are normalised by the sum of their magnitudes (here 4)
    torch.testing.assert_close(out[2], 0.25 * rows[3] - 0.75 * rows[4])
    assert guidance.and_weights([0.0, 0.0]) == [0.0, 0.0]


def test_rescale_scales_the_term_only_measured_in_eps_space():
    x, sigma = _t(9), 2.5
    eps_cfg, eps_c, eps_w = _t(0) * 2, _t(1), _t(2)
    phi, s = 0.7, 1.5
    term = s * (eps_c - eps_w)
    f = phi * eps_c.std(dim=(1, 2, 3), keepdim=True) / (eps_cfg + term).std(dim=(1, 2, 3), keepdim=True) + 1 - phi
    expected = eps_cfg + f * term
    torch.testing.assert_close(guidance.combine(eps_cfg, eps_c, eps_w, s, phi), expected)
    to_x0 = lambda eps: x - sigma * eps  # noqa: E731
    from_x0 = guidance.combine(to_x0(eps_cfg), to_x0(eps_c), to_x0(eps_w), s, phi, x=x)
    torch.testing.assert_close(from_x0, to_x0(expected), rtol=1e-12, atol=1e-12)


def test_sampler_step_pairs_second_order_calls():
    # Heun, 4 steps: the host expects 8 calls, 7 happen (the last step makes one)
    assert [guidance.sampler_step(j, 8, 4) for j in range(7)] == [0, 0, 1, 1, 2, 2, 3]
    assert [guidance.sampler_step(j, 4, 4) for j in range(4)] == [0, 1, 2, 3]
    assert [i for i in range(4) if guidance.step_in_window(i, 4, 0.3, 1.0)] == [2, 3]
    assert [i for i in range(4) if guidance.step_in_window(i, 4, 0.0, 0.5)] == [0, 1]


def test_window_by_fraction():
    assert guidance.in_window(0.0, 0.0, 1.0) and guidance.in_window(0.99, 0.0, 1.0)
    assert not guidance.in_window(0.1, 0.2, 0.8)
    assert guidance.in_window(0.2, 0.2, 0.8) and not guidance.in_window(0.8, 0.2, 0.8)
    assert guidance.progress(5, 20) == 0.25 and guidance.progress(0, 0) == 0.0


def test_sigma_window_from_percent():
    # a rectified-flow-like schedule: sigma = 1 - percent, so sigma lives in [0, 1]
    window = guidance.sigma_window(0.25, 0.75, lambda pct: 1.0 - pct)
    assert window == (0.75, 0.25)
    assert guidance.in_sigma_window(0.5, window) and not guidance.in_sigma_window(0.8, window)
    assert not guidance.in_sigma_window(0.25, window)
    everything = guidance.sigma_window(0.0, 1.0, lambda pct: 1.0 - pct)
    assert everything == (math.inf, -math.inf)
    assert guidance.in_sigma_window(0.0, everything) and guidance.in_sigma_window(14.6, everything)
