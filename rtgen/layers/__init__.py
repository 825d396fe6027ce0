"""Reusable network blocks: attention, token mixers, embeddings. Networks in `models` assemble them."""
