"""Regenerate the prompt-template assets from an installed cn_clip 1.6.0.

The reference keeps its prompts as lambdas in ``cn_clip/eval/cvinw_zeroshot_templates.py``;
this turns each into a ``str.format`` string by calling it with ``"{}"``, and checks that the
string gives the lambda's output for sample names. Two assets:

- ``qaclip_harness/data/imagenet_templates_cn.json``: the 183 ``openai_templates``;
- ``qaclip_harness/data/zeroshot_templates_cn.json``: the other lists that Chinese-CLIP's
  zero-shot script selects by dataset folder name, and that selection itself, read (as data)
  from the ``template_dict`` literal in ``cn_clip/eval/zeroshot_evaluation.py``.

Usage: python tools/extract_templates.py [--out PATH] [--out-zeroshot PATH]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
from pathlib import Path

SOURCE_SHA256 = "ae3324fae56ada29571f1aafb2b42179bc4c67729558b89afebe36df9d795629"
# cn_clip/eval/zeroshot_evaluation.py of cn_clip 1.6.0: where the by-dataset selection is written
RULE_SOURCE_SHA256 = "20f5f2e4075bcc4fe03c3e9b31162b3022b133430ac3b184319b170b444bffc1"
ASSETS = Path(__file__).resolve().parents[1] / "qaclip_harness" / "data"
OUT = ASSETS / "imagenet_templates_cn.json"
OUT_ZEROSHOT = ASSETS / "zeroshot_templates_cn.json"
DEFAULT_LIST = "openai_templates"  # the list imagenet_templates_cn.json holds
URL = "https://github.com/OFA-Sys/Chinese-CLIP/blob/master/cn_clip/eval/"
ATTRIBUTION = "Chinese-CLIP, Copyright (c) OFA-Sys (https://github.com/OFA-Sys/Chinese-CLIP), MIT License"
SAMPLES = ["猫", "金毛寻回犬", "a{b}c", "{}", "x%sy"]


def templates_sha256(templates: list[str]) -> str:
    """sha256 of the templates joined by newlines (the digest qaclip_harness/data/prompts.py pins)."""
    return hashlib.sha256("\n".join(templates).encode("utf-8")).hexdigest()


def _checked_source(path: Path, want: str) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != want:
        raise SystemExit(f"{path} has sha256 {digest}, expected {want} (cn_clip 1.6.0)")
    return digest


def format_strings(lambdas: list, variable: str) -> list[str]:
    """Each prompt lambda as a ``str.format`` string, checked against the lambda on sample names."""
    templates = [fn("{}") for fn in lambdas]
    for fmt, fn in zip(templates, lambdas):
        if fmt.count("{") != 1 or fmt.count("}") != 1:
            raise SystemExit(f"{variable}: template {fmt!r} has braces besides the class slot")
        for name in SAMPLES:
            if fmt.format(name) != fn(name):
                raise SystemExit(f"{variable}: template {fmt!r} does not reproduce the lambda for {name!r}")
    return templates


def extract() -> dict:
    """The JSON document: provenance plus the format strings."""
    from importlib import metadata

    from cn_clip.eval import cvinw_zeroshot_templates as mod

    source = Path(mod.__file__)
    digest = _checked_source(source, SOURCE_SHA256)
    templates = format_strings(mod.openai_templates, "openai_templates")
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
        "attribution": ATTRIBUTION,
        "count": len(templates),
        "templates_sha256": templates_sha256(templates),
        "templates": templates,
    }


def selection_rule(path: Path) -> dict[str, str]:
    """``template_dict`` of the zero-shot script as data: dataset folder name -> list variable name.

    It is a dict literal inside the script's ``__main__`` block (never importable), so it is read
    from the syntax tree; every value must be a plain name of a template list.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "template_dict" for t in node.targets)
    ]
    if len(found) != 1 or not isinstance(found[0], ast.Dict):
        raise SystemExit(f"{path}: expected one dict literal assigned to template_dict, found {len(found)}")
    rule = {}
    for key, value in zip(found[0].keys, found[0].values):
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(value, ast.Name)):
            raise SystemExit(
                f"{path}: template_dict entry at line {getattr(key, 'lineno', '?')} is not 'name': variable"
            )
        rule[key.value] = value.id
    return rule


def extract_zeroshot() -> dict:
    """The JSON document of the by-dataset lists and the rule that selects them."""
    from importlib import metadata

    from cn_clip.eval import cvinw_zeroshot_templates as mod

    src = _checked_source(Path(mod.__file__), SOURCE_SHA256)
    rule_path = Path(mod.__file__).with_name("zeroshot_evaluation.py")  # not imported: its imports need timm
    rule_digest = _checked_source(rule_path, RULE_SOURCE_SHA256)
    rule = selection_rule(rule_path)
    # the script's fallback: any folder name not in template_dict takes template_dict['openai']
    if rule.get("openai") != DEFAULT_LIST:
        raise SystemExit(f"{rule_path}: template_dict['openai'] is {rule.get('openai')!r}, expected {DEFAULT_LIST}")
    by_dataset = {k: v for k, v in rule.items() if k != "openai"}
    lists = {}
    for variable in sorted(set(by_dataset.values()) - {DEFAULT_LIST}):
        lists[variable] = format_strings(getattr(mod, variable), variable)
    return {
        "name": "Chinese-CLIP zero-shot prompt templates by dataset",
        "description": (
            "Prompt lists Chinese-CLIP's zero-shot script chooses by the dataset's folder name "
            "(exact match); every other folder takes the default list, the 183 openai_templates "
            "kept in imagenet_templates_cn.json. '{}' is the class name."
        ),
        "source": {
            "package": "cn_clip",
            "version": metadata.version("cn_clip"),
            "templates": {
                "path": "cn_clip/eval/cvinw_zeroshot_templates.py",
                "sha256": src,
                "url": URL + "cvinw_zeroshot_templates.py",
            },
            "rule": {
                "path": "cn_clip/eval/zeroshot_evaluation.py",
                "variable": "template_dict",
                "sha256": rule_digest,
                "url": URL + "zeroshot_evaluation.py",
            },
        },
        "license": "MIT",
        "attribution": ATTRIBUTION,
        "default": DEFAULT_LIST,
        "by_dataset": by_dataset,
        "lists": lists,
        "lists_sha256": {name: templates_sha256(t) for name, t in lists.items()},
    }


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    """Write the JSON assets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--out-zeroshot", type=Path, default=OUT_ZEROSHOT)
    args = parser.parse_args()
    doc = extract()
    _write(args.out, doc)
    print(f"wrote {doc['count']} templates to {args.out} (sha256 {doc['templates_sha256']})")
    zs = extract_zeroshot()
    _write(args.out_zeroshot, zs)
    counts = ", ".join(f"{k} {len(v)}" for k, v in zs["lists"].items())
    print(f"wrote {len(zs['by_dataset'])} dataset rules and the lists {counts} to {args.out_zeroshot}")


if __name__ == "__main__":
    main()
