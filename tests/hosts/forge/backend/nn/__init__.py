"""Test double of ``backend.nn`` for these tests: a routed small UNet and a tiny DiT stand-in."""
