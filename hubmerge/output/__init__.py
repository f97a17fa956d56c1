"""Output: streaming sharded safetensors writer, atomic folders, content hash, model card."""
