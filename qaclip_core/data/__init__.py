"""Evaluation data readers: Chinese-CLIP retrieval LMDBs, ImageNet folders, prompt templates."""
from .imagenet import LABEL_CN_SHA256, ImageNetFolder, read_labels
from .retrieval import (
    LmdbImages,
    RetrievalSplit,
    TextRecord,
    find_dataset_dir,
    load_retrieval_split,
    read_texts,
    write_retrieval_split,
)
from .templates import imagenet_templates, prompts

__all__ = [
    "LABEL_CN_SHA256",
    "ImageNetFolder",
    "LmdbImages",
    "RetrievalSplit",
    "TextRecord",
    "find_dataset_dir",
    "imagenet_templates",
    "load_retrieval_split",
    "prompts",
    "read_labels",
    "read_texts",
    "write_retrieval_split",
]
