"""Evaluation data: dataset cards (``catalog``), readers (Chinese-CLIP retrieval LMDBs, ImageNet and ELEVATER folders), prompts, the image loader."""
