"""Human-readable results: plots and tables written into run directories."""
from .plots import bar_by_bucket, feature_density

__all__ = ["bar_by_bucket", "feature_density"]
