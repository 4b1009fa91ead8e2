"""Evaluation: retrieval recall and zero-shot accuracy, as Chinese-CLIP's scripts compute them."""
from .retrieval import RetrievalResult, evaluate_retrieval, recall_at_k, topk_desc, write_predictions
from .zeroshot import accuracy, build_classifier

__all__ = [
    "RetrievalResult",
    "accuracy",
    "build_classifier",
    "evaluate_retrieval",
    "recall_at_k",
    "topk_desc",
    "write_predictions",
]
