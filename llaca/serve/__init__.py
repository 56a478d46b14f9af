"""Serving answers: the assistant that hot-swaps versions, and continuous batching across users and groups."""
