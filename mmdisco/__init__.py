"""Discriminator-guided cooperative diffusion for joint audio and video generation."""
__version__ = "0.1.0"
