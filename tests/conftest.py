"""Shared pytest fixtures. Host doubles: see tests/hosts/a1111.py."""

from tests.hosts.a1111 import a1111_env, a1111_host, a1111_host_factory  # noqa: F401
from tests.hosts.forge_host import forge_host  # noqa: F401
