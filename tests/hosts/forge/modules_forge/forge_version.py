"""Test double of ``modules_forge/forge_version.py`` for these tests: only the version string.

``2.0.1v1.10.1`` is Forge2 main; the driver sets ``"neo"`` for Forge Neo (hosts.md §10, appendix).
"""

version = "2.0.1v1.10.1"
