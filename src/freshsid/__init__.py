"""freshsid: keep collaborative Semantic IDs fresh for generative retrieval."""

__version__ = "0.1.0"
