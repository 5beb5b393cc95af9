"""Test double of the A1111 1.10.1 modules/api package written for these tests (no FastAPI app, no routes)."""
