"""Evaluation: answer records, scorers (refusal now, reward models later), XSTest, reports."""
