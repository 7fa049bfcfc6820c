"""Reward models (Llama 2 style): pairwise ranking training, evaluation, combined reward.

A reward model is the decoder with a scalar head (`alignment.model.ScalarHeadModel`) read at
the last token of the response; `sigmoid(r)` turns its score into Llama 2's [0, 1] reward.
"""
