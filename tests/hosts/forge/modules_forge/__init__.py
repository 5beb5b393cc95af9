"""Test double of Forge's ``modules_forge`` package for these tests: its presence marks a Forge-family host."""
