"""Shared test fixtures: see the module docstring of each fixture."""
