"""Reading and writing model weights: GGUF, Hugging Face safetensors, official Flax Gemma."""
