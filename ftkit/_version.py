"""The one place the package version lives, below every other module."""

__version__ = "0.1.0"
