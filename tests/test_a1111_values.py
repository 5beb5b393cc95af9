"""Values and host configurations on the A1111 double, each expected value computed in the test.

- The guided step equals CFG + s·Σ_k (w_k/Σ_j w_j)(cond_k − weak_k) (with rescale: f·term, f measured in
  eps space), for a k-diffusion sampler (x0 outputs) and DDIM (eps outputs); cond and weak come from
  the host's own model wrapper with attn1 patched by the test's own Sinkhorn forward.
- The start/end window counts sampler steps: both calls of a Heun step share the decision.
- Padding (pad_cond_uncond, _v0): the weak call sees the cond tokens the host's cond rows saw.
- ControlNet with prompts of different token lengths: weak calls are sized like the host's calls.
- Batched weak pass: a failure while growing the batch leaves the host's rows matched.
- Infotext: ASAG keys only where a step was guided.
"""

from __future__ import annotations

import types

import pytest
import torch
from einops import rearrange

from asag_lib import sinkhorn

LAYER = "input.1"
LAYER_PATH = "input_blocks.1.1.transformer_blocks.0.attn1"  # SD1.5 input block 1, written by hand
AND_PROMPT = "a cat :0.5 AND a dog :1.5"  # weights sum to 2, so unnormalised weights double the term
CONDS_LIST = [[(0, 0.5), (1, 1.5)], [(2, 0.5), (3, 1.5)]]
LONG = " ".join(["word"] * 80)  # more than 75 tokens: two 77-token chunks
FAST = {"steps": 3, "width": 64, "height": 64}


def _test_attn1(self, x, context=None, mask=None, **kwargs):
    """The test's own weak attn1: q/k/v by the module's projections, (h d) heads, the Sinkhorn plan."""
    context = x if context is None else context
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads)
               for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    out = sinkhorn.sinkhorn_attention(q, k, v, iterations=2, tol=1e-3, scale=self.scale, rescale=True)
    return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def _capture(host):
    """Test callbacks registered after ASAG's: the first call's inputs and its guided denoised."""
    seen = {}
    cb = host.modules["script_callbacks"]

    def before(params):
        if "x" not in seen:
            seen.update(x=params.x.clone(), sigma=params.sigma.clone(), image_cond=params.image_cond.clone(),
                        text=params.text_cond.clone(), uncond=params.text_uncond.clone(), denoiser=params.denoiser)

    def after(params):
        seen.setdefault("guided", params.x.clone())

    cb.on_cfg_denoiser(before, name="test-capture-before")
    cb.on_cfg_after_cfg(after, name="test-capture-after")
    return seen


def _expected(host, seen, scale, cfg, rescale, eps_outputs):
    denoiser = seen["denoiser"]
    inner = denoiser.inner_model
    x, sigma, image_cond, text, uncond = (seen[k] for k in ("x", "sigma", "image_cond", "text", "uncond"))
    with torch.no_grad():
        out = inner(x, sigma, cond={"c_crossattn": [torch.cat([text, uncond])], "c_concat": [image_cond]})
        module = dict(host.unet.named_modules())[LAYER_PATH]
        module.forward = types.MethodType(_test_attn1, module)
        try:
            weak = inner(x[:4], sigma[:4], cond={"c_crossattn": [text], "c_concat": [image_cond[:4]]})
        finally:
            del module.forward
    cond, un = out[:4], out[4:]
    rows = []
    for i, entries in enumerate(CONDS_LIST):
        total = sum(w for _, w in entries)
        cfg_i = un[i] + sum((cond[k] - un[i]) * (w * cfg) for k, w in entries)
        delta = sum((cond[k] - weak[k]) * (w / total) for k, w in entries)
        mean_cond = sum(cond[k] * (w / total) for k, w in entries)
        term = scale * delta
        if rescale:
            x_i = x[entries[0][0]]
            to_eps = (lambda t: t) if eps_outputs else (lambda t, x_i=x_i: x_i - t)
            f = rescale * to_eps(mean_cond).std() / to_eps(cfg_i + term).std() + (1 - rescale)
            term = term * f
        rows.append(cfg_i + term)
    assert (weak - cond).abs().max() > 1e-3  # the perturbation does something
    return torch.stack(rows)


@pytest.mark.parametrize("rescale", [0.0, 0.7])
@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_guided_step_equals_cfg_plus_the_weighted_mean_term(a1111_host, sampler, rescale):
    host = a1111_host
    seen = _capture(host)
    scale, cfg = 3.0, 5.0
    host.txt2img(prompt=AND_PROMPT, seed=4, batch_size=2, steps=2, width=64, height=64, sampler=sampler,
                 cfg_scale=cfg, alwayson={"ASAG": [True, scale, LAYER, 2, 0.001, 0.0, 1.0, "both", rescale]})
    expected = _expected(host, seen, scale, cfg, rescale, eps_outputs=sampler == "DDIM")
    torch.testing.assert_close(seen["guided"], expected, rtol=1e-4, atol=1e-5)


def test_scale_zero_with_rescale_is_still_off(a1111_host):
    """Rescale acts on the ASAG term only, so at scale 0 the step is the host's own, bit for bit."""
    host = a1111_host
    seen = _capture(host)
    host.txt2img(prompt=AND_PROMPT, seed=4, batch_size=2, steps=2, width=64, height=64,
                 alwayson={"ASAG": [True, 0.0, LAYER, 2, 0.001, 0.0, 1.0, "both", 1.0]})
    plain = _capture(host)
    with host.without_extension():
        host.txt2img(prompt=AND_PROMPT, seed=4, batch_size=2, steps=2, width=64, height=64)
    assert torch.equal(seen["guided"], plain["guided"])


# ------------------------------------------------------------------------------------------------
# the start/end window counts sampler steps


def test_both_calls_of_a_second_order_step_share_the_window_decision(a1111_host, kernel_calls, capsys):
    host = a1111_host
    calls = kernel_calls
    # Heun, 4 steps: 7 model calls (2 per step, 1 in the last). start 0.3: steps 2 and 3 (i/4 >= 0.3),
    # i.e. 2 + 1 calls; a window on the call count (3/8 >= 0.3) would also guide step 1's second call.
    host.txt2img(seed=1, steps=4, width=64, height=64, sampler="Heun",
                 alwayson={"ASAG": [True, 1.5, LAYER, 2, 0.001, 0.3, 1.0]})
    assert len(calls) == 3
    assert "done: 2 of 4 steps guided, 3 weak passes" in capsys.readouterr().out


@pytest.mark.parametrize(("start", "end", "guided"), [(0.0, 0.5, [0, 1]), (0.5, 1.0, [2, 3]), (0.25, 0.75, [1, 2])])
def test_window_selects_steps_by_index_over_n(a1111_host, kernel_calls, start, end, guided):
    host = a1111_host
    seen = []
    cb = host.modules["script_callbacks"]
    calls = kernel_calls
    cb.on_cfg_denoised(lambda params: seen.append(len(calls)), name="test-count")
    host.txt2img(seed=1, steps=4, width=64, height=64, alwayson={"ASAG": [True, 1.5, LAYER, 2, 0.001, start, end]})
    done = [i for i in range(4) if seen[i] > (seen[i - 1] if i else 0)]
    assert done == guided


# ------------------------------------------------------------------------------------------------
# prompts of different token lengths: padding and ControlNet


def _unet_contexts(host):
    contexts = []

    def hook(module, args, kwargs):
        contexts.append(kwargs["context"].clone())

    return contexts, host.unet.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("option", ["pad_cond_uncond", "pad_cond_uncond_v0"])
def test_weak_call_sees_the_cond_tokens_the_host_saw(a1111_host, option):
    host = a1111_host
    setattr(host.opts, option, True)
    contexts, handle = _unet_contexts(host)
    try:  # short prompt, long negative: the host pads (pad_cond_uncond) or cuts (v0) to equal lengths
        host.txt2img(prompt="a cat", negative_prompt=LONG, seed=1, batch_size=2, steps=1, width=64, height=64,
                     alwayson={"ASAG": [True, 1.5, LAYER, 2, 0.001, 0.0, 1.0, "both", 0.0, "rows", "separate"]})
    finally:
        handle.remove()
    main, weak = contexts  # one host call (equal lengths after padding), then the weak call
    assert main.shape[0] == 4 and weak.shape[0] == 2
    assert torch.equal(weak, main[:2])


def test_controlnet_reference_with_a_long_prompt_at_batch_two(a1111_host, kernel_calls, monkeypatch):
    host = a1111_host
    calls = kernel_calls
    unit = host.controlnet.ControlUnit("reference")
    sizes = []
    real_restore = host.controlnet.UnetHook.restore

    def restore(self):
        sizes.extend(size for size, _ in self.calls)
        return real_restore(self)

    monkeypatch.setattr(host.controlnet.UnetHook, "restore", restore)
    # lengths differ, no padding: the host runs the 2 cond rows in one call (min(2B, n_cond)), the
    # uncond rows in another; the reference unit caches its latent at the first call's size (2)
    result = host.txt2img(prompt=LONG, negative_prompt="blurry", seed=2, batch_size=2, controlnet=[unit],
                          alwayson={"ASAG": [True, 1.5, LAYER]}, **FAST)
    assert "ASAG error" not in result.infotexts[0] and len(calls) == FAST["steps"]
    assert set(sizes) == {2}
    assert "ASAG scale: 1.5" in result.infotexts[0]


# ------------------------------------------------------------------------------------------------
# batched weak pass


def test_batched_weak_pass_failing_while_growing_the_batch_leaves_matched_rows(a1111_host, monkeypatch):
    from asag_lib.hosts import a1111

    host = a1111_host
    args = [True, 1.5, LAYER, 2, 0.001, 0.0, 1.0, "both", 0.0, "rows"]
    separate = host.txt2img(seed=3, alwayson={"ASAG": [*args, "separate"]}, **FAST)
    real = a1111._insert_rows
    count = []

    def failing_third(value, n):
        count.append(1)
        if len(count) == 3:  # image_cond, after x and sigma were grown
            raise RuntimeError("out of memory")
        return real(value, n)

    monkeypatch.setattr(a1111, "_insert_rows", failing_third)
    batched = host.txt2img(seed=3, alwayson={"ASAG": [*args, "batched"]}, **FAST)
    assert all(torch.equal(a, b) for a, b in zip(separate.images, batched.images, strict=True))


# ------------------------------------------------------------------------------------------------
# infotext: only what happened


@pytest.mark.parametrize(("fields", "why"), [
    ({"alwayson": {"ASAG": [True, 1.5, LAYER, 2, 0.001, 0.9, 0.95]}}, "outside the start/end window"),
    ({"alwayson": {"ASAG": [True, 1.5, LAYER, 2, 0.001, 0.0, 1.0, "hires"]}}, "Hires. fix is off"),
])
def test_no_guided_step_means_no_asag_infotext(a1111_host, capsys, fields, why):
    host = a1111_host
    plain = host.txt2img(seed=1, **FAST)
    result = host.txt2img(seed=1, **FAST, **fields)
    assert result.infotexts == plain.infotexts
    assert all(torch.equal(a, b) for a, b in zip(plain.images, result.images, strict=True))
    out = capsys.readouterr().out
    assert "nothing was guided" in out and why in out


def test_alternative_unet_leaves_no_asag_infotext(a1111_host, capsys):
    host = a1111_host
    host.modules["sd_unet"].current_unet = object()
    try:
        result = host.txt2img(seed=1, alwayson={"ASAG": [True, 1.5, LAYER]}, **FAST)
    finally:
        host.modules["sd_unet"].current_unet = None
    assert "ASAG" not in result.infotexts[0]
    assert "alternative UNet" in capsys.readouterr().out


def test_summary_line_at_the_end_of_a_guided_job(a1111_host, capsys):
    host = a1111_host
    host.txt2img(seed=1, alwayson={"ASAG": [True, 1.5, LAYER]}, **FAST)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ASAG: done")]
    assert lines == ["ASAG: done: 3 of 3 steps guided, 3 weak passes, 1 layers (input.1.0), 64 tokens"]


# ------------------------------------------------------------------------------------------------
# global RNG: a forward that draws noise (ControlNet's reference units do) must not see ASAG's weak call


def test_separate_weak_call_leaves_the_global_rng_as_the_host_left_it(a1111_host):
    host = a1111_host
    draws = []

    def noisy(module, args, kwargs):  # a reference unit draws torch.randn_like on every UNet forward
        draws.append((args[0].shape[0], torch.randn(args[0].shape[0], 3)))  # consumption depends on rows

    handle = host.unet.register_forward_pre_hook(noisy, with_kwargs=True)
    try:
        torch.manual_seed(123)
        host.txt2img(seed=1, **FAST)
        plain_state = torch.get_rng_state()
        plain_draws = list(draws)
        draws.clear()
        torch.manual_seed(123)
        host.txt2img(seed=1, alwayson={"ASAG": [True, 1.5, LAYER, 2, 0.001, 0.0, 1.0, "both", 0.0, "rows",
                                                "separate"]}, **FAST)
        asag_state = torch.get_rng_state()
    finally:
        handle.remove()
    assert torch.equal(asag_state, plain_state)  # the next img2img init latent would otherwise move
    host_draws = [d for d in draws if d[0] != 1]
    weak_draws = [d for d in draws if d[0] == 1]
    assert len(weak_draws) == FAST["steps"] and len(host_draws) == len(plain_draws)
    for (_, host_noise), (_, plain_noise) in zip(host_draws, plain_draws, strict=True):
        assert torch.equal(host_noise, plain_noise)  # the host's own calls draw what they drew without ASAG
    # the weak call of each step draws what the host's call of that step drew first
    per_step = len(plain_draws) // FAST["steps"]
    for i, (_, weak_noise) in enumerate(weak_draws):
        assert torch.equal(weak_noise, plain_draws[i * per_step][1][: weak_noise.shape[0]])
