"""Test double of ``backend.patcher`` for these tests: ModelPatcher, UnetPatcher and ControlNet only."""
