"""Teach SAELens (the optional `sae-lens` package) our TopK transcoders.

SAELens has ReLU and JumpReLU transcoders but no TopK one, so `SAE.load_from_disk` refuses a folder of
architecture `topk_transcoder` / `topk_skip_transcoder` (dictionaries/files.py). After `register()` it
loads them as subclasses of its own Transcoder / SkipTranscoder whose activation is its TopK, which
compute what `Transcoder.forward` computes.
"""
from __future__ import annotations

from dataclasses import dataclass


def register() -> None:
    """Register the two architectures with SAELens (once; later calls do nothing)."""
    from sae_lens import register_sae_class
    from sae_lens.registry import SAE_CLASS_REGISTRY
    from sae_lens.saes.topk_sae import TopK
    from sae_lens.saes.transcoder import SkipTranscoder, SkipTranscoderConfig, Transcoder, TranscoderConfig

    if "topk_transcoder" in SAE_CLASS_REGISTRY:
        return

    @dataclass
    class TopKTranscoderConfig(TranscoderConfig):
        k: int = 32

        @classmethod
        def architecture(cls) -> str:
            return "topk_transcoder"

    @dataclass
    class TopKSkipTranscoderConfig(SkipTranscoderConfig):
        k: int = 32

        @classmethod
        def architecture(cls) -> str:
            return "topk_skip_transcoder"

    class TopKTranscoder(Transcoder):
        def get_activation_fn(self):
            return TopK(self.cfg.k)

    class TopKSkipTranscoder(SkipTranscoder):
        def get_activation_fn(self):
            return TopK(self.cfg.k)

    register_sae_class("topk_transcoder", TopKTranscoder, TopKTranscoderConfig)
    register_sae_class("topk_skip_transcoder", TopKSkipTranscoder, TopKSkipTranscoderConfig)
