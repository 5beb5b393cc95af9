"""Telemetry (asag_lib/telemetry.py): maths against hand-computed values, the kernel's stats against a
float64 plan computed here, same bits on and off, and the reports through the host doubles."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import torch

from asag_lib import params, telemetry, weak
from asag_lib.attention import KernelOptions
from asag_lib.hosts.job import Job
from asag_lib.sinkhorn import SinkhornStats
from tests.test_weak import _qkv, sinkhorn_potentials_ref

FAST = {"steps": 1, "width": 64, "height": 64}
ON = [True, 2.0, "all", 2, 1e-3, 0.0, 1.0, "both", 0.0, "rows", "auto", "asag", 10.0]


def _stats(entropy, error, iters):
    return SinkhornStats(row_entropy=torch.tensor(entropy), marginal_error=torch.tensor(error),
                         iterations_used=torch.tensor(iters))


def test_recorder_maths_by_hand():
    rec = telemetry.Recorder()
    rec.name("a", "input.1")
    n = 4  # log 4 normalises
    rec.record("a", n, _stats([[math.log(4), 0.5 * math.log(4)]], [[0.1, 0.3]], [[2, 1]]))
    rec.record("a", n, _stats([[0.25 * math.log(4), math.log(4)]], [[0.0, 0.2]], [[2, 2]]))
    rec.record(("output", 0, 0), 1, _stats([[0.0]], [[0.05]], [[1]]))  # one key: entropy 1 by definition
    layers = rec.layers()
    assert list(layers) == ["input.1", "output.0.0"]
    a = layers["input.1"]
    assert math.isclose(a["entropy"]["mean"], (1 + 0.5 + 0.25 + 1) / 4)
    assert (a["entropy"]["min"], a["entropy"]["max"], a["entropy"]["n"]) == (0.25, 1.0, 4)
    assert math.isclose(a["marginal_error"]["mean"], 0.6 / 4, rel_tol=1e-6)
    assert math.isclose(a["marginal_error"]["max"], 0.3, rel_tol=1e-6)
    assert a["iterations"] == {"mean": 1.75, "min": 1.0, "max": 2.0, "n": 4}
    overall = rec.overall()
    assert math.isclose(overall["entropy"], (2.75 + 1) / 5)
    assert math.isclose(overall["marginal_error"], 0.65 / 5, rel_tol=1e-6)
    assert rec.infotext() == {"ASAG entropy": "0.7500", "ASAG marginal error": "0.13"}
    table = rec.table().splitlines()
    assert len(table) == 4 and table[2].startswith("input.1") and "0.6875" in table[2]
    assert telemetry.Recorder().infotext() == {}


def _entropy_ref(q, k, v, iterations):
    """Mean over queries of the entropy of the row-normalised adversarial plan, / log n_k (float64)."""
    scale = 1 / math.sqrt(q.shape[-1])
    log_k = -scale * q @ k.transpose(-1, -2)
    _, g = sinkhorn_potentials_ref(log_k, iterations)
    rows = torch.softmax(log_k + g, dim=-1)  # the row-normalised plan
    entropy = -(rows * rows.log()).sum(-1).mean(-1)
    return entropy / math.log(log_k.shape[-1])


def test_kernel_stats_reach_the_recorder_and_match_a_float64_plan():
    q, k, v = _qkv(seed=3)
    rec = telemetry.Recorder()
    options = KernelOptions(iterations=3, tol=0.0, telemetry=rec)
    for _ in range(q.shape[0] * q.shape[1]):  # one sampled head per call, every head once
        options.attend(q, k, v, layer=("input", 1, 0))
    layer = rec.layers()["input.1.0"]
    expected = _entropy_ref(q, k, v, 3)
    assert layer["entropy"]["n"] == expected.numel()
    assert math.isclose(layer["entropy"]["mean"], float(expected.mean()), rel_tol=1e-5)
    assert math.isclose(layer["entropy"]["min"], float(expected.min()), rel_tol=1e-5)
    assert math.isclose(layer["entropy"]["max"], float(expected.max()), rel_tol=1e-5)
    assert layer["iterations"]["max"] == 3.0
    # uniform plan: the entropy maximum
    rec = telemetry.Recorder()
    KernelOptions(weak_model="uniform", telemetry=rec).attend(q, k, v, layer="x")
    assert rec.overall()["entropy"] == 1.0 and rec.overall()["marginal_error"] == 0.0


def test_same_bits_with_telemetry_on_and_off_for_every_weak_model():
    q, k, v = _qkv(seed=4, dtype=torch.float32)
    for name in weak.NAMES:
        off = KernelOptions(weak_model=name, latent_hw=(3, 4), seed=2)
        rec = telemetry.Recorder()
        on = KernelOptions(weak_model=name, latent_hw=(3, 4), seed=2, telemetry=rec)
        assert torch.equal(off.attend(q, k, v, layer="l"), on.attend(q, k, v, layer="l")), name
        assert bool(rec) == (name != "blur"), name  # SEG's blur is no transport plan: nothing to report


def test_json_next_to_the_first_saved_image_lists_every_image(tmp_path):
    job = Job(params.from_mapping({"enabled": True, "telemetry": True, "weak_model": "random"}))
    rec = telemetry.recorder(job)
    rec.record("a", 4, _stats([[math.log(4)]], [[0.0]], [[1]]))
    first = tmp_path / "00001-5.png"
    telemetry.on_image_saved(SimpleNamespace(p=SimpleNamespace(asag_job=job), filename=str(first)))
    telemetry.on_image_saved(SimpleNamespace(p=SimpleNamespace(asag_job=job), filename=str(tmp_path / "00002-6.png")))
    data = json.loads((tmp_path / "00001-5.asag.json").read_text())
    assert data["images"] == ["00001-5.png", "00002-6.png"]
    assert data["weak_model"] == "random" and data["overall"]["entropy"] == 1.0
    assert len(list(tmp_path.iterdir())) == 1
    # a job without telemetry writes nothing
    quiet = Job(params.from_mapping({"enabled": True}))
    assert telemetry.recorder(quiet) is None
    telemetry.on_image_saved(SimpleNamespace(p=SimpleNamespace(asag_job=quiet), filename=str(tmp_path / "x.png")))
    assert len(list(tmp_path.iterdir())) == 1


# ------------------------------------------------------------------------------------------------
# through the hosts


def test_a1111_telemetry_same_image_keys_in_infotext_and_api_and_a_table(a1111_host, capsys):
    host = a1111_host
    off = host.txt2img(seed=3, alwayson={"ASAG": [*ON, False]}, **FAST)
    on = host.txt2img(seed=3, alwayson={"ASAG": [*ON, True]}, **FAST)
    assert all(torch.equal(a, b) for a, b in zip(off.images, on.images, strict=True))
    assert "ASAG entropy" not in off.infotexts[0]
    text = on.infotexts[0]
    fields = dict(part.split(": ", 1) for part in text.splitlines()[-1].split(", ") if ": " in part)
    assert 0.0 < float(fields["ASAG entropy"]) <= 1.0
    assert float(fields["ASAG marginal error"]) >= 0.0
    out = capsys.readouterr().out
    assert "ASAG telemetry" in out and "input.1" in out
    zero = host.txt2img(seed=3, alwayson={"ASAG": [True, 0.0, *ON[2:], True]}, **FAST)
    assert "ASAG entropy" not in zero.infotexts[0]  # no guided step, no keys
    api = host.api_txt2img({"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "seed": 1,
                            "alwayson_scripts": {"ASAG": {"args": [{"enabled": True, "layers": "all",
                                                                    "telemetry": True}]}}})
    assert "ASAG entropy: " in api["info_dict"]["infotexts"][0]


def test_forge_telemetry_same_samples_and_infotext_values(forge_host):
    engine = forge_host.make_engine("sd15")
    size = dict(height=64, width=64, steps=1)
    off = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=3.0, layers="input.1"), **size)
    on = forge_host.txt2img(engine, forge_host.args(enabled=True, scale=3.0, layers="input.1", telemetry=True), **size)
    assert torch.equal(off.samples, on.samples)
    value = on.p.extra_generation_params["ASAG entropy"]
    assert callable(value) and 0.0 < float(value()) <= 1.0
    assert "ASAG entropy" not in off.p.extra_generation_params
