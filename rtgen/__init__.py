"""rtgen: radiotherapy dose prediction and image synthesis with state-space and diffusion models."""

__version__ = "0.1.0"
