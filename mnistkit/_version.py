"""The version of mnistkit (one place; ``mnistkit.__version__`` re-exports it)."""

__version__ = "0.2.0"
