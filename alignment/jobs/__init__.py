"""Runnable jobs: `alignment.main` imports `alignment.jobs.<config.job>` and calls its `run`."""
