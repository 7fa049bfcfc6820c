"""Low-rank adapters (LoRA) as a wrapper over the decoder's parameter tree."""

from alignment.lora.adapters import (
    LoraConfig, TARGETS, init_adapters, adapter_logical_axes, merge, load_adapters,
    save_adapters)
