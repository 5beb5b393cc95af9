"""Bug 1 of issue 10: quantized UNets (bnb nf4/fp4, GGUF) have Linear layers without `out_features`; ASAG
must size its memory reservation from `heads`/`dim_head`, and no failure while setting up may leave a
claim of ASAG in the infotext."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asag_lib import layers, params
from asag_lib.hosts import forge

SIZE = dict(height=64, width=64)


class _Packed(nn.Module):
    """A quantized Linear as hosts store it: a packed weight, no in_features/out_features."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(7), requires_grad=False)


class _Attention(nn.Module):
    def __init__(self, heads, dim_head):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.to_q, self.to_k, self.to_v = _Packed(), _Packed(), _Packed()


def test_width_comes_from_heads_and_dim_head():
    assert forge.attention_width(_Attention(5, 64)) == (5, 320)
    assert forge.attention_width(_Attention(10, 64)) == (10, 640)


def test_memory_estimate_on_packed_layers_is_hand_computed():
    ref = layers.LayerRef("middle", 0, 0)
    module = _Attention(heads=2, dim_head=8)
    need = forge.memory_estimate([(ref, module)], {ref: 16}, batch=3)
    # scores: 3·2·16·16·4 bytes; working copies: 6·3·16·(2·8)·4 bytes
    assert need == 3 * 2 * 16 * 16 * 4 + 6 * 3 * 16 * 16 * 4


def _asag_fns(unet):
    return [fn for fn in unet.model_options.get("sampler_post_cfg_function", []) if forge.is_ours(fn)]


@pytest.mark.parametrize("forge_host", ["forge2", "neo"], indirect=True)
def test_quantized_unet_is_guided_without_error(forge_host, capsys):
    engine = forge_host.make_engine("sd15", quantized=True)
    attn = engine.forge_objects.unet.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1
    assert not hasattr(attn.to_q, "out_features")
    off = forge_host.txt2img(engine, forge_host.args(), **SIZE)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=3.0, layers="input.1"), **SIZE)
    assert len(on.weak_calls) == 2
    assert "ASAG error" not in on.p.extra_generation_params and "failed" not in capsys.readouterr().out
    assert on.p.extra_generation_params["ASAG scale"] == "3"
    assert not torch.equal(on.samples, off.samples)
    assert on.pbes_unets[-1].extra_preserved_memory_during_sampling > 0


def test_a_failure_while_setting_up_leaves_no_claim_and_no_patch(forge_host, monkeypatch, capsys):
    engine = forge_host.make_engine("sd15")
    off = forge_host.txt2img(engine, forge_host.args(), hires=True, **SIZE)

    def broken(*args, **kwargs):
        raise AttributeError("'Linear' object has no attribute 'out_features'")

    monkeypatch.setattr(layers, "token_counts", broken)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=3.0), hires=True, **SIZE)
    out = capsys.readouterr().out
    extra = on.p.extra_generation_params
    assert not any(params.is_infotext_key(k) and k != "ASAG error" for k in extra)
    assert "out_features" in extra["ASAG error"]
    assert out.count("ASAG: setting up ASAG failed (") == 1  # once per job, not per pass
    assert "ASAG: done: 0 of 0 steps guided, 0 weak passes; not guided: setting up ASAG failed" in out
    assert not on.weak_calls and all(not _asag_fns(u) for u in on.pbes_unets)
    assert torch.equal(on.samples, off.samples)
    monkeypatch.undo()
    after = forge_host.txt2img(engine, forge_host.args(), hires=True, **SIZE)
    assert torch.equal(after.samples, off.samples)
