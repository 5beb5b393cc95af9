"""Test doubles of the A1111 1.10.1 `modules` package (see tests/hosts/a1111.py for the driver)."""
