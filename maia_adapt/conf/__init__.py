"""Hydra configs shipped inside the package, so that an installed wheel finds them (pkg://maia_adapt.conf)."""
