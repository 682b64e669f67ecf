"""The package version, in a module of its own so that submodules (the tuning key records
it) read it without importing the package. Keep it equal to pyproject.toml's
[project] version (tests/test_tuning.py checks)."""

__version__ = "0.3.0"
