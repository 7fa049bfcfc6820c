"""Low-rank adapters (LoRA) as a wrapper over the decoder's parameter tree."""

from alignment.lora.adapters import (
    LoraConfig, TARGETS, adapter_logical_axes, adapter_paths, decoder_params, init_adapters, load_adapters,
    lora_forward, merge, save_adapters, save_run_adapters)
