"""qaclip_core: a faithful inference core for QA-CLIP and Chinese-CLIP (CN-CLIP) models.

The public API follows the QA-CLIP example::

    import qaclip_core as clip
    model, preprocess = clip.load_from_name("ViT-B-16", device="cpu", download_root="./")
    text = clip.tokenize(["杰尼龟", "皮卡丘"])
"""

from .checkpoint import infer_arch, load_checkpoint, read_state_dict
from .errors import CheckpointError, ChecksumError, DownloadError, QAClipError, UnknownModelError
from .loading import load_from_name
from .model.clip import CLIP, create_model
from .registry import ModelCard, available_models, get_card
from .tokenizer import tokenize
from .transforms import image_transform

__version__ = "0.1.0"

__all__ = [
    "CLIP",
    "CheckpointError",
    "ChecksumError",
    "DownloadError",
    "ModelCard",
    "QAClipError",
    "UnknownModelError",
    "available_models",
    "create_model",
    "get_card",
    "image_transform",
    "infer_arch",
    "load_checkpoint",
    "load_from_name",
    "read_state_dict",
    "tokenize",
]
