"""One prepared accelerator run: device ceilings, training MFU, sampling vs the bandwidth
bound and the PyTorch comparison, under a time budget (see README.md)."""
