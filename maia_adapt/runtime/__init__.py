"""Running stages reliably: resume fingerprints, training-state checkpoints, DDP, tracking, fault points."""
