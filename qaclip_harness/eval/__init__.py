"""Encoding and evaluation: a dataset and an encoder in, features, classifiers and metrics out (no downloads)."""
