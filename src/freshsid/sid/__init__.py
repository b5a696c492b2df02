"""Semantic-ID tokenizers (RQ-KMeans, RQ-VAE), their shared quantization core and collision suffixing."""
