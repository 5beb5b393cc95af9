"""Test double of ``backend.sampling`` for these tests: the CFG body and condition compilation only."""
