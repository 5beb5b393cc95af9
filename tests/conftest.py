"""Shared pytest fixtures. Host doubles: see tests/hosts/a1111.py."""

import pytest

import asag_lib.attention as attention
from tests.hosts.a1111 import a1111_env, a1111_host, a1111_host_factory  # noqa: F401
from tests.hosts.forge_host import forge_host  # noqa: F401


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts Sinkhorn kernel calls (one per patched layer per weak call), by q's shape."""
    calls = []
    real = attention.sinkhorn_attention

    def counting(q, k, v, **kwargs):
        calls.append(tuple(q.shape))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(attention, "sinkhorn_attention", counting)
    return calls
