"""Test double of Forge2's ``backend`` package for these tests (patcher, sampling, k-model, UNet, engine)."""
