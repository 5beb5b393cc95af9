"""Test double of ``backend.modules`` for these tests: KModel and the predictors only."""
