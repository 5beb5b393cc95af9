"""Test double of ``modules_forge/forge_version.py`` for these tests: only the version string (Forge2 main)."""

version = "2.0.1v1.10.1"
