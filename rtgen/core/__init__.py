"""Errors, atomic writes, the model registry and the shared vocabulary: the floor everything stands on."""
