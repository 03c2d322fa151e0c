"""Discriminator guidance: the guides (discriminator, conditional discriminator, critic), their training, storage and the guided sampler."""
