"""Evaluation: ground-truth decoders and metrics, Fréchet distances, AV-Align, tonality, reports."""
