"""The analysis library the stages wire up: activations and their caches, probes, interventions,
transitional positions, calibration fine-tuning, transcoder circuits, skill evaluation."""
