"""Regenerate qaclip_core/assets/imagenet_templates_cn.json from an installed cn_clip 1.6.0.

The reference keeps its 183 ImageNet prompts as lambdas (``openai_templates`` in
``cn_clip/eval/cvinw_zeroshot_templates.py``); this turns each into a ``str.format`` string by
calling it with ``"{}"``, and checks that the string gives the lambda's output for sample names.

Usage: python tools/extract_templates.py [--out PATH]
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import List

SOURCE_SHA256 = "ae3324fae56ada29571f1aafb2b42179bc4c67729558b89afebe36df9d795629"
OUT = Path(__file__).resolve().parents[1] / "qaclip_core" / "assets" / "imagenet_templates_cn.json"
SAMPLES = ["猫", "金毛寻回犬", "a{b}c", "{}", "x%sy"]


def templates_sha256(templates: List[str]) -> str:
    """sha256 of the templates joined by newlines (the digest templates.py pins)."""
    return hashlib.sha256("\n".join(templates).encode("utf-8")).hexdigest()


def extract() -> dict:
    """The JSON document: provenance plus the format strings."""
    from importlib import metadata
    from cn_clip.eval import cvinw_zeroshot_templates as mod

    source = Path(mod.__file__)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{source} has sha256 {digest}, expected {SOURCE_SHA256} (cn_clip 1.6.0)")
    templates = [fn("{}") for fn in mod.openai_templates]
    for fmt, fn in zip(templates, mod.openai_templates):
        if fmt.count("{") != 1 or fmt.count("}") != 1:
            raise SystemExit(f"template {fmt!r} has braces besides the class slot")
        for name in SAMPLES:
            if fmt.format(name) != fn(name):
                raise SystemExit(f"template {fmt!r} does not reproduce the lambda for {name!r}")
    return {
        "name": "openai_templates (Chinese)",
        "description": "Prompt templates Chinese-CLIP uses for ImageNet zero-shot classification; '{}' is the class name.",
        "source": {
            "package": "cn_clip",
            "version": metadata.version("cn_clip"),
            "path": "cn_clip/eval/cvinw_zeroshot_templates.py",
            "variable": "openai_templates",
            "sha256": digest,
            "url": "https://github.com/OFA-Sys/Chinese-CLIP/blob/master/cn_clip/eval/cvinw_zeroshot_templates.py",
        },
        "license": "MIT",
        "attribution": "Chinese-CLIP, Copyright (c) OFA-Sys (https://github.com/OFA-Sys/Chinese-CLIP), MIT License",
        "count": len(templates),
        "templates_sha256": templates_sha256(templates),
        "templates": templates,
    }


def main() -> None:
    """Write the JSON asset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    doc = extract()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {doc['count']} templates to {args.out} (sha256 {doc['templates_sha256']})")


if __name__ == "__main__":
    main()
