"""Test double of ``ldm_patched.modules`` for these tests: samplers and model_base only."""
