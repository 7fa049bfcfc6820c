"""Evaluation: the scorer registry (refusal, reward models), answering, XSTest, statistics, reports."""
