"""Test double of ``backend.diffusion_engine`` for these tests: the engine base class only."""
