"""Test double of old Forge's ``ldm_patched`` package for these tests (samplers and model_base only)."""
