"""Running compressed models: decoding archives, packed / sparse kernels."""
