"""The model side: LoRA training, batched prediction, adapter merging, chat layouts."""
