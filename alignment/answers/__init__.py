"""Answers: the record of one model answer (`records`) and the type of a scorer (`scorer`).

Reward models, RL and evaluation all pass these around, so they sit below them (beside `data`,
whose readers report a bad line) rather than inside evaluation.
"""
