"""Entropy-bounded sampler for dlm, registered as the decoding strategy ``eb_sampler``."""

from dlm_eb_sampler.sampler import EBSampler, EBSamplerConfig, eb_select, token_entropy

__all__ = ["EBSampler", "EBSamplerConfig", "eb_select", "token_entropy"]
