"""domain-embed: adapt a sentence-embedding model to a domain and measure the gap it closed."""

__version__ = "0.1.0"
