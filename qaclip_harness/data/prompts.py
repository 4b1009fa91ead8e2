"""Zero-shot prompts: the 183 ImageNet templates, and which template list a dataset takes (Chinese-CLIP's rule).

Chinese-CLIP's zero-shot script picks a template list by the exact name of the dataset's folder
(``fgvc-aircraft-2013b-variants102`` takes the aircraft prompts, ``eurosat_clip`` and
``resisc45_clip`` the satellite prompts, ``food-101``, ``oxford-flower-102`` and ``country211``
their own); every other folder, ImageNet's included, takes the 183 ``openai_templates``.

Both are data beside this module, extracted from the cn_clip 1.6.0 wheel by
``tools/extract_templates.py`` (with provenance and licence) and pinned here:
``imagenet_templates_cn.json`` holds the 183 ``str.format`` strings (four of them duplicated;
they stay, since the reference averages over all 183), ``zeroshot_templates_cn.json`` the
by-dataset lists and the rule.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from qaclip_core.errors import QAClipError

HERE = Path(__file__).resolve().parent
IMAGENET_TEMPLATES_FILE = HERE / "imagenet_templates_cn.json"
IMAGENET_TEMPLATES_SHA256 = "e5657fd9fce2044fa350ff3132abdecbcf06b9c69964c305ffb5fabe8254b82c"
NUM_TEMPLATES = 183
TEMPLATES_FILE = HERE / "zeroshot_templates_cn.json"
# sha256 of the canonical JSON of {default, by_dataset, lists} (see content_sha256)
CONTENT_SHA256 = "ba6127597e0d9dd931c43331cefb8ac2e9a2e5d1d0374506c8459a504909bc73"
DEFAULT_LIST = "openai_templates"


@lru_cache(maxsize=1)
def _imagenet() -> tuple[str, ...]:
    doc = json.loads(IMAGENET_TEMPLATES_FILE.read_text(encoding="utf-8"))
    templates = doc["templates"]
    digest = hashlib.sha256("\n".join(templates).encode("utf-8")).hexdigest()
    if digest != IMAGENET_TEMPLATES_SHA256 or len(templates) != NUM_TEMPLATES:
        raise QAClipError(
            f"{IMAGENET_TEMPLATES_FILE}: {len(templates)} templates with sha256 {digest}, expected {NUM_TEMPLATES} "
            f"with sha256 {IMAGENET_TEMPLATES_SHA256}; regenerate it with tools/extract_templates.py"
        )
    return tuple(templates)


def imagenet_templates() -> list[str]:
    """The 183 prompt format strings (``"{}的照片"`` ...), in the reference's order."""
    return list(_imagenet())


def prompts(classname: str) -> list[str]:
    """Every ImageNet template filled with ``classname`` (before text preprocessing)."""
    return [t.format(classname) for t in _imagenet()]


def content_sha256(doc: dict) -> str:
    """Digest of what selects and fills the prompts (the rule and the lists), independent of layout."""
    core = {k: doc[k] for k in ("default", "by_dataset", "lists")}
    return hashlib.sha256(json.dumps(core, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    try:
        doc = json.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))
        digest = content_sha256(doc)
    except (OSError, ValueError, KeyError) as e:
        raise QAClipError(
            f"{TEMPLATES_FILE}: cannot be read ({e}); regenerate it with tools/extract_templates.py"
        ) from None
    if digest != CONTENT_SHA256 or doc["default"] != DEFAULT_LIST:
        raise QAClipError(
            f"{TEMPLATES_FILE}: content sha256 {digest}, expected {CONTENT_SHA256}; "
            "regenerate it with tools/extract_templates.py"
        )
    return dict(doc["by_dataset"]), {name: tuple(t) for name, t in doc["lists"].items()}


def template_set(folder_name: str) -> str:
    """Name of the list the reference uses for a dataset folder (``openai_templates`` unless listed)."""
    rule, _ = _load()
    return rule.get(folder_name, DEFAULT_LIST)


def templates_for(folder_name: str) -> list[str]:
    """The prompt format strings (``"{}的照片"`` ...) for a dataset folder, in the reference's order."""
    name = template_set(folder_name)
    if name == DEFAULT_LIST:
        return imagenet_templates()
    return list(_load()[1][name])


def special_folders() -> dict[str, str]:
    """Every folder name with a list of its own, and that list's name."""
    return dict(_load()[0])


def read_templates(path: str | Path) -> list[str]:
    """A project's prompt templates: a YAML (or JSON) list of ``str.format`` strings, each with one ``{}``."""
    import yaml

    from qaclip_harness.errors import DatasetError

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: the templates file cannot be read as YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, list) or not doc:
        raise DatasetError(f"{path}: expected a non-empty list of prompt templates such as '{{}}的照片'")
    for i, t in enumerate(doc):
        if (
            not isinstance(t, str)
            or t.count("{}") != 1
            or t.replace("{}", "").count("{")
            or t.replace("{}", "").count("}")
        ):
            raise DatasetError(
                f"{path}: template {i} must be a string with exactly one {{}} for the class name, got {t!r:.60}"
            )
    return list(doc)


def dataset_templates(folder_name: str, templates_file: str | None = None) -> tuple[list[str], str]:
    """(templates, the name of their set): a project's own file when its card names one, else the reference's rule."""
    if templates_file:
        return read_templates(templates_file), str(templates_file)
    return templates_for(folder_name), template_set(folder_name)
