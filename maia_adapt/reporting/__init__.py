"""Human-readable results: plots and tables written into run directories."""
from .plots import bar_by_bucket

__all__ = ["bar_by_bucket"]
