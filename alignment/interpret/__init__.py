"""Interpretability tools for prompt debugging (token salience and its renderings)."""
