"""maia-adapt: how a generative model adapts its behaviour to a skill level (Maia-2 as model system)."""
__version__ = "0.1.0"
