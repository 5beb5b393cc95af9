"""attn1 wiring against A1111's own ldm and sgm `CrossAttention` (real host code, not a double).

Skips unless ASAG_A1111_HOST points at a built A1111 (e.g. /work/hosts/a1111: webui/repositories and
venv/). The check runs in the host's own Python: with softmax in place of the Sinkhorn kernel, our
attn1 forward must equal `module(x)` and `module(x, context)` for both classes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HOST = os.environ.get("ASAG_A1111_HOST")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHECK = r"""
import json, sys
import torch
sys.path[:0] = [sys.argv[1] + "/stable-diffusion-stability-ai", sys.argv[1] + "/generative-models", sys.argv[2]]
import ldm.modules.attention as ldm_attention
import sgm.modules.attention as sgm_attention
from asag_lib.attention import KernelOptions, make_attn1_forward

class Softmax(KernelOptions):
    def attend(self, q, k, v, scale=None, layer=None):
        return torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v

torch.manual_seed(0)
forward = make_attn1_forward(Softmax())
result = {}
for name, cls in (("ldm", ldm_attention.CrossAttention), ("sgm", sgm_attention.CrossAttention)):
    for label, context_dim in (("self", None), ("context", 24)):
        module = cls(32, context_dim=context_dim, heads=4, dim_head=8).eval()
        x = torch.randn(2, 9, 32)
        context = None if context_dim is None else torch.randn(2, 13, context_dim)
        with torch.no_grad():
            ours = forward(module, x, context)
            theirs = module(x) if context is None else module(x, context)
        result[f"{name}-{label}"] = (ours - theirs).abs().max().item()
print(json.dumps(result))
"""


@pytest.mark.skipif(not HOST, reason="set ASAG_A1111_HOST to a built A1111 (webui/repositories, venv/)")
def test_attn1_forward_equals_the_hosts_cross_attention_with_softmax():
    python = os.path.join(HOST, "venv", "bin", "python")
    repositories = os.path.join(HOST, "webui", "repositories")
    done = subprocess.run([python, "-c", CHECK, repositories, REPO], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    diffs = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(diffs) == {"ldm-self", "ldm-context", "sgm-self", "sgm-context"}
    assert max(diffs.values()) < 1e-5, diffs
    print(sys.version, diffs)
