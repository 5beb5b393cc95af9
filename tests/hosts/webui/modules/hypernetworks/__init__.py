"""Test double of the modules.hypernetworks package for these tests (see hypernetwork.py)."""
