"""Image generation: the KV-cached decoding engine and its CPU kernels (csrc/)."""
