"""The DVC stages, one click command each (also `mmdisco STAGE`)."""
