"""Metrics on features and logits: retrieval recall both ways and zero-shot top-k accuracy, as the reference scripts compute them."""
