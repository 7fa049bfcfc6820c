"""Data: sources, mixtures, hygiene and tokenized batches."""
