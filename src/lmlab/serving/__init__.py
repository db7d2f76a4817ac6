"""Serving: the OpenAI-compatible server and its continuous-batching engine."""
