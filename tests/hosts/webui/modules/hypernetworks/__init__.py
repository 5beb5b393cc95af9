"""Test double of the modules.hypernetworks package (see hypernetwork.py)."""
