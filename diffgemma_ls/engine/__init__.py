"""The model side: loading, quantization, samplers and the infill engine (torch lives here only)."""
