"""Evaluation data readers: Chinese-CLIP retrieval LMDBs, ImageNet and ELEVATER folders, prompt templates."""
from .elevater import ElevaterFolder, class_ids, read_index
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
from .zeroshot_templates import template_set, templates_for

__all__ = [
    "LABEL_CN_SHA256",
    "ElevaterFolder",
    "ImageNetFolder",
    "LmdbImages",
    "RetrievalSplit",
    "TextRecord",
    "class_ids",
    "find_dataset_dir",
    "imagenet_templates",
    "load_retrieval_split",
    "prompts",
    "read_index",
    "read_labels",
    "read_texts",
    "template_set",
    "templates_for",
    "write_retrieval_split",
]
