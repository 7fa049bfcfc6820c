"""Batched text generation with a KV cache (greedy, temperature, top-k, top-p)."""

from alignment.sampling.sampler import (
    DEFAULT_STOP_IDS, END_OF_TURN_ID, EOS_ID, SampleOutput, Sampler, SamplingParams,
    bucket_size, choose_tokens, filter_logits, generate, generate_padded, top_k_filter,
    top_p_filter)
