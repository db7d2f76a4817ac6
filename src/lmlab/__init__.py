"""lmlab: Transformer language models you can read, train, inspect and ship."""

__version__ = "0.1.0"
