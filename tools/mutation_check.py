"""Does the default suite run catch realistic single-point regressions on its own? A kill table.

    python tools/mutation_check.py                 # the unmutated tree, then every mutant
    python tools/mutation_check.py --only tok-lower,vit-gelu --keep
    python tools/mutation_check.py --list

Each mutant is one realistic regression (preprocessing, tokenizer, both vision towers, the text
tower, evaluation code, precision), written as one replacement in one file. It is applied to a
COPY of the tree (the files git tracks plus untracked ones it does not ignore; never the working
tree), and ``python -m pytest benchmarks -m "not throughput"`` runs there with that copy first
on ``sys.path`` (``tests/`` is not run, and cn_clip is hidden unless ``--with-cn-clip``: the
gate must not need it). A mutant is killed when the run is red; the table names the first
case that went red (``-x`` stops there; ``--all-cases`` runs every case and lists them all).
The unmutated copy must be green, else nothing is measured. Every run shares one package cache
(``QACLIP_CACHE``) that the unmutated run fills, so the table also shows that no cached feature or
pixel of the correct code hides a regression. About 10 s a mutant on two cores (with ``-x``);
run it with ``nice``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    """One regression: replace ``old`` (which must occur exactly once) by ``new`` in ``path``."""

    name: str
    area: str
    path: str
    old: str
    new: str
    what: str


T, V, TX, TK, E, P, D = (
    "qaclip_core/transforms.py",
    "qaclip_core/model/vision.py",
    "qaclip_core/model/text.py",
    "qaclip_core/tokenizer.py",
    "qaclip_harness/eval/zeroshot.py",
    "qaclip_core/checkpoint.py",
    "qaclip_harness/data/retrieval.py",
)

MUTANTS: list[Mutant] = [
    # ---- preprocessing
    Mutant(
        "pre-bilinear",
        "preprocessing",
        T,
        "interpolation=InterpolationMode.BICUBIC",
        "interpolation=InterpolationMode.BILINEAR",
        "bilinear instead of bicubic resizing",
    ),
    Mutant(
        "pre-centre-crop",
        "preprocessing",
        T,
        "super().__init__([self.resize, to_rgb, ToTensor(), self.normalize])",
        "self.resize = Resize(image_size, interpolation=InterpolationMode.BICUBIC)\n"
        "        from torchvision.transforms import CenterCrop\n"
        "        super().__init__([self.resize, CenterCrop(image_size), to_rgb, ToTensor(), self.normalize])",
        "resize the short side and centre-crop (the usual CLIP transform) instead of squashing",
    ),
    Mutant(
        "pre-convert-first",
        "preprocessing",
        T,
        "super().__init__([self.resize, to_rgb, ToTensor(), self.normalize])",
        "super().__init__([to_rgb, self.resize, ToTensor(), self.normalize])",
        "convert to RGB before resizing",
    ),
    Mutant(
        "pre-into-convert-first",
        "preprocessing",
        T,
        "return np.asarray(to_rgb(self.resize(image)))",
        "return np.asarray(self.resize(to_rgb(image)))",
        "the pixels of the batch loader and the pixel cache are converted before resizing",
    ),
    Mutant(
        "pre-imagenet-mean",
        "preprocessing",
        T,
        "MEAN = (0.48145466, 0.4578275, 0.40821073)",
        "MEAN = (0.485, 0.456, 0.406)",
        "ImageNet's mean instead of CLIP's",
    ),
    Mutant(
        "pre-rgba-composite",
        "preprocessing",
        T,
        '    return image.convert("RGB")',
        '    if image.mode in ("RGBA", "LA"):\n        bg = Image.new("RGBA", image.size, (255, 255, 255, 255))\n'
        '        return Image.alpha_composite(bg, image.convert("RGBA")).convert("RGB")\n    return image.convert("RGB")',
        "transparent images composited on white",
    ),
    # ---- tokenizer
    Mutant(
        "tok-no-lower",
        "tokenizer",
        TK,
        "words.extend(_split_punct(_strip_accents(word.lower())))",
        "words.extend(_split_punct(_strip_accents(word)))",
        "the basic tokenizer no longer lower-cases",
    ),
    Mutant(
        "tok-no-accents",
        "tokenizer",
        TK,
        "words.extend(_split_punct(_strip_accents(word.lower())))",
        "words.extend(_split_punct(word.lower()))",
        "accents are no longer stripped",
    ),
    Mutant(
        "tok-context-48",
        "tokenizer",
        TK,
        "CONTEXT_LENGTH = 52",
        "CONTEXT_LENGTH = 48",
        "context length 48 instead of 52",
    ),
    Mutant(
        "tok-cut-early",
        "tokenizer",
        TK,
        "*self.encode(text)[: context_length - 2], self.sep_id]",
        "*self.encode(text)[: context_length - 3], self.sep_id]",
        "truncation keeps one token fewer",
    ),
    Mutant(
        "tok-nfkc",
        "tokenizer",
        TK,
        '    return text.lower().replace("\\u201c", \'"\').replace("\\u201d", \'"\')',
        '    return unicodedata.normalize("NFKC", text).lower().replace("\\u201c", \'"\').replace("\\u201d", \'"\')',
        "full-width forms folded to ASCII (NFKC) before tokenizing",
    ),
    Mutant(
        "tok-punct",
        "tokenizer",
        TK,
        ' or cat.startswith("P"):',
        ":",
        "non-ASCII punctuation (，。) no longer split off",
    ),
    # ---- text tower
    Mutant(
        "txt-gelu-tanh",
        "text tower",
        TX,
        "return F.gelu(self.dense(x))",
        'return F.gelu(self.dense(x), approximate="tanh")',
        "tanh-approximated GELU in BERT",
    ),
    Mutant(
        "txt-ln-eps",
        "text tower",
        TX,
        "        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)",
        "        self.LayerNorm = nn.LayerNorm(d_out, eps=1e-5)",
        "LayerNorm eps 1e-5 in the encoder layers",
    ),
    Mutant(
        "txt-no-mask",
        "text tower",
        TX,
        "    return (1.0 - attention_mask.to(dtype))[:, None, None, :] * MASK_VALUE",
        "    return (0.0 * attention_mask.to(dtype))[:, None, None, :] * MASK_VALUE",
        "padding no longer masked",
    ),
    Mutant(
        "txt-position-offset",
        "text tower",
        TX,
        "        pos = self.position_embeddings.weight[:length]",
        "        pos = self.position_embeddings.weight[1 : length + 1]",
        "position ids start at 1",
    ),
    Mutant(
        "txt-token-type",
        "text tower",
        TX,
        "+ self.token_type_embeddings.weight[0]",
        "+ self.token_type_embeddings.weight[1]",
        "token type 1 instead of 0",
    ),
    # ---- ViT
    Mutant(
        "vit-gelu",
        "ViT",
        V,
        "    return x * torch.sigmoid(1.702 * x)",
        "    return F.gelu(x)",
        "exact GELU instead of QuickGELU",
    ),
    Mutant(
        "vit-no-ln-pre",
        "ViT",
        V,
        "x = self.transformer(self.ln_pre(x), first_token_only=self.first_token_only)",
        "x = self.transformer(x, first_token_only=self.first_token_only)",
        "ln_pre skipped",
    ),
    Mutant(
        "vit-pos-shift",
        "ViT",
        V,
        "x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)",
        "x = torch.cat([cls, x], dim=1) + self.positional_embedding.roll(1, 0).to(x.dtype)",
        "positional embedding rows shifted",
    ),
    Mutant(
        "vit-attn-scale",
        "ViT",
        V,
        "        out = F.scaled_dot_product_attention(q, k, v)\n        return self.out_proj(",
        "        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / q.shape[-1])\n        return self.out_proj(",
        "attention scaled by 1/d instead of 1/sqrt(d)",
    ),
    # ---- ResNet
    Mutant(
        "rn-no-mean-token",
        "ResNet",
        V,
        "tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)",
        "tokens = torch.cat([tokens.amax(dim=1, keepdim=True), tokens], dim=1)",
        "attention pool queries with the max, not the mean",
    ),
    Mutant(
        "rn-stride-conv",
        "ResNet",
        V,
        "            if n == self.depth:\n                y = self.pool(y)",
        "            if n == self.depth - 1:\n                y = self.pool(y)",
        "the bottleneck pools before its 3x3 convolution, not after",
    ),
    Mutant(
        "rn-stem-pool-max",
        "ResNet",
        V,
        "self.stem_pool = nn.AvgPool2d(STEM_POOL)",
        "self.stem_pool = nn.MaxPool2d(STEM_POOL)",
        "max pooling in the stem",
    ),
    Mutant(
        "rn-shortcut-relu",
        "ResNet",
        V,
        "        return F.relu(y + shortcut)",
        "        return F.relu(y) + shortcut",
        "the block's ReLU before the residual sum",
    ),
    # ---- evaluation code
    Mutant(
        "eval-no-renorm",
        "evaluation",
        E,
        "    return (mean / mean.norm(dim=-1, keepdim=True)).t().contiguous()",
        "    return mean.t().contiguous()",
        "the class embedding is not renormalised after averaging the prompts",
    ),
    Mutant(
        "eval-one-template",
        "evaluation",
        E,
        "    texts = [_fill(t, c) for c in classnames for t in templates]",
        "    templates = templates[:1]\n    texts = [_fill(t, c) for c in classnames for t in templates]",
        "only the first template is used",
    ),
    Mutant(
        "eval-template-count",
        "evaluation",
        "qaclip_harness/data/prompts.py",
        "        return imagenet_templates()",
        "        return imagenet_templates()[:80]",
        "the default list cut to 80 templates",
    ),
    Mutant(
        "eval-logit-scale",
        "evaluation",
        "qaclip_harness/eval/runner.py",
        "    logits = 100.0 * image_feats @ weights",
        "    logits = image_feats @ weights",
        "zero-shot logits without the scale of 100",
    ),
    Mutant(
        "eval-first-gt-only",
        "evaluation",
        D,
        "        text_to_images={rec.text_id: list(rec.image_ids) for rec in texts},",
        "        text_to_images={rec.text_id: list(rec.image_ids)[:1] for rec in texts},",
        "only a caption's first ground-truth image counts",
    ),
    Mutant(
        "eval-dedupe-captions",
        "evaluation",
        D,
        "            records.append(TextRecord(text_id, text, list(image_ids), line=lineno))",
        "            if any(r.text == text for r in records):\n                continue\n"
        "            records.append(TextRecord(text_id, text, list(image_ids), line=lineno))",
        "duplicate captions dropped",
    ),
    Mutant(
        "eval-recall-off-by-one",
        "evaluation",
        "qaclip_harness/metrics/retrieval.py",
        "    return {k: int(hits[:, :k].any(axis=1).sum()) for k in ks}",
        "    return {k: int(hits[:, : max(1, k - 1)].any(axis=1).sum()) for k in ks}",
        "R@k counts the first k-1 predictions",
    ),
    # ---- precision
    Mutant(
        "prec-ln-no-cast",
        "precision",
        V,
        "        return y.to(x.dtype)",
        "        return y",
        "the ViT's fp32 LayerNorm no longer casts back to the model's precision",
    ),
    Mutant(
        "prec-fp16-is-bf16", "precision", P, '"fp16": torch.float16,', '"fp16": torch.bfloat16,', "fp16 runs in bf16"
    ),
    Mutant(
        "prec-bf16-is-fp16", "precision", P, '"bf16": torch.bfloat16}', '"bf16": torch.float16}', "bf16 runs in fp16"
    ),
    Mutant(
        "prec-ignored",
        "precision",
        P,
        "    return model.to(device=device, dtype=dtype).eval()",
        "    return model.to(device=device).eval()",
        "the precision is ignored (stays fp32)",
    ),
]


def copy_tree(dest: Path) -> None:
    """The files git tracks plus untracked ones it does not ignore, copied to ``dest``."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    for rel in out.stdout.decode().split("\0"):
        if not rel:
            continue
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def apply(tree: Path, mutant: Mutant) -> None:
    """Apply ``mutant`` to the copy ``tree`` (ValueError unless its text occurs exactly once)."""
    path = tree / mutant.path
    text = path.read_text(encoding="utf-8")
    n = text.count(mutant.old)
    if n != 1:
        raise ValueError(f"{mutant.name}: {mutant.path} holds its text {n} times (expected once): update the mutant")
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")


HIDE_CN_CLIP = (
    "import sys\nsys.modules['cn_clip'] = None  # hidden by tools/mutation_check.py: the gate must not need it\n"
)


def run_suite(tree: Path, stop_first: bool, with_cn_clip: bool, timeout: int, cache: Path) -> tuple:
    """(return code, red case ids, seconds, output tail) of ``pytest benchmarks -m "not throughput"`` in ``tree``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    # one package cache for every run, warmed by the unmutated tree: a mutant must turn the run red
    # although the features and pixels of the correct code are there to be (wrongly) reused
    env["QACLIP_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(tree)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if not with_cn_clip:
        (tree / "_hide_cn_clip").mkdir(exist_ok=True)
        (tree / "_hide_cn_clip" / "sitecustomize.py").write_text(HIDE_CN_CLIP, encoding="utf-8")
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(tree / "_hide_cn_clip")])
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "-m",
        "not throughput",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        "--no-header",
    ] + (["-x"] if stop_first else [])
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = -1, f"timed out after {timeout}s\n{e.stdout or ''}"
    red = re.findall(r"^(?:FAILED|ERROR) \S+?\[([^\]]+)\]", text, flags=re.M)
    return rc, red, time.perf_counter() - start, "\n".join(text.splitlines()[-15:])


def check_imports(tree: Path) -> None:
    """The copy's own packages are what its runs import (not the editable install of the working tree)."""
    code = "import qaclip_core, qaclip_harness; print(qaclip_core.__file__); print(qaclip_harness.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    )
    for line in out.stdout.split():
        if not Path(line).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"the copy imports {line}, not its own files: cannot measure mutants")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the unmutated tree and the mutants; print the kill table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated mutant names")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--skip-baseline", action="store_true", help="do not run the unmutated tree first")
    p.add_argument(
        "--all-cases", action="store_true", help="run every case of each mutant (no -x): every red case is listed"
    )
    p.add_argument(
        "--with-cn-clip", action="store_true", help="leave cn_clip importable (the live parity-* cases then run)"
    )
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--keep", action="store_true", help="keep the copies (their paths are printed)")
    args = p.parse_args(argv)
    mutants = MUTANTS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.name for m in MUTANTS}
        if unknown:
            raise SystemExit(f"unknown mutants {sorted(unknown)}; --list shows them")
        mutants = [m for m in MUTANTS if m.name in wanted]
    if args.list:
        for m in mutants:
            print(f"{m.name:<24}{m.area:<14}{m.path}: {m.what}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="qaclip-mutants-"))
    rows = []
    try:
        base = work / "base"  # one snapshot: later edits of the working tree do not leak into the run
        copy_tree(base)
        for m in mutants:  # every mutant must still apply before an hour of runs starts
            count = (base / m.path).read_text(encoding="utf-8").count(m.old)
            if count != 1:
                raise SystemExit(f"{m.name}: {m.path} holds its text {count} times (expected once): update the mutant")
        if not args.skip_baseline:
            tree = work / "unmutated"
            shutil.copytree(base, tree)
            check_imports(tree)
            rc, red, secs, tail = run_suite(tree, False, args.with_cn_clip, args.timeout, work / "cache")
            print(f"unmutated: {'green' if rc == 0 else 'RED'} in {secs:.0f}s\n{tail}", flush=True)
            if rc != 0:
                print("the unmutated tree is not green: nothing to measure")
                return 2
        for m in mutants:
            tree = work / m.name
            shutil.copytree(base, tree)
            apply(tree, m)
            rc, red, secs, tail = run_suite(tree, not args.all_cases, args.with_cn_clip, args.timeout, work / "cache")
            killed = rc not in (0, 5)
            rows.append((m, killed, red, secs))
            print(
                f"{m.name}: {'killed' if killed else 'SURVIVED'} in {secs:.0f}s by {', '.join(red) or '-'}", flush=True
            )
            if not killed or not red:
                print(tail, flush=True)
            if not args.keep:
                shutil.rmtree(tree, ignore_errors=True)
    finally:
        if args.keep:
            print(f"copies kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| mutant | area | regression | killed | red case(s) |\n|---|---|---|---|---|")
    for m, killed, red, _ in rows:
        print(f"| {m.name} | {m.area} | {m.what} | {'yes' if killed else '**no**'} | {', '.join(red) or '-'} |")
    survivors = [m.name for m, killed, _, _ in rows if not killed]
    print(
        f"\n{len(rows) - len(survivors)} of {len(rows)} killed"
        + (f"; survivors: {', '.join(survivors)}" if survivors else "")
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
