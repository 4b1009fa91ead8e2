"""Does the default suite run catch realistic single-point regressions, and does a warm cache give the same verdicts?

    python tools/mutation_check.py                 # the unmutated tree, then every mutant, cold and warm
    python tools/mutation_check.py --only tok-no-lower,suite-encoder-reuse --keep
    python tools/mutation_check.py --ci            # the subset CI runs (tests/harness/test_cache_mutations.py)
    python tools/mutation_check.py --list

Each mutant is one realistic regression (preprocessing, tokenizer, both vision towers, the text
tower, evaluation code, precision, and outside what a hand-kept key would name: loading, the
suite, the export, decoding, data identity, an environment variable), written as one replacement
in one file or as one variable of the run's environment. It is applied to a COPY of the tree (the
files git tracks plus untracked ones it does not ignore; never the working tree), and
``python -m pytest benchmarks -m "not throughput" --report DIR`` runs there twice: cold (an empty
package cache) and warm (a copy of the cache the unmutated tree's run filled, so every feature,
pixel, export, identity record and fixture dataset of the correct code is there to be wrongly
reused). ``tests/`` is not run, and cn_clip is hidden unless ``--with-cn-clip`` (the gate must not
need it). Every case runs (no ``-x``): verdicts are compared case by case.

A mutant is killed only when a gate case fails with a verdict (its status in report.json is
``failed``: a gate compared numbers and said no). A run that crashes, fails to import, errors in
a case or times out is listed apart (``broken``), never counted as a kill. For every mutant the
warm run must give each case the cold run's verdict, the same numbers, the same data fingerprint
and bit-equal features (the sha256 of each step's features in report.json). Mutants marked
``same`` (data identity, an environment variable) need not turn the gate red: what they show is
that a cache does not hide them. The unmutated copy must be green cold and warm, else nothing is
measured. Exit status 0 only when every mutant is killed (or, for ``same``, matched) with warm
equal to cold. Run it with ``nice``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    """One regression: replace ``old`` (which must occur exactly once) by ``new`` in ``path``, or set ``env``."""

    name: str
    area: str
    path: str
    old: str
    new: str
    what: str
    env: tuple[tuple[str, str], ...] = ()  # variables set for the mutant's runs (path, old and new empty)
    expect: str = "killed"  # or "same": the gate need not go red; warm must equal cold


T, V, TX, TK, E, P, D, S = (
    "qaclip_core/transforms.py",
    "qaclip_core/model/vision.py",
    "qaclip_core/model/text.py",
    "qaclip_core/tokenizer.py",
    "qaclip_harness/eval/zeroshot.py",
    "qaclip_core/checkpoint.py",
    "qaclip_harness/data/retrieval.py",
    "qaclip_harness/suite/session.py",
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
    Mutant(
        "eval-i2t-all-images",
        "evaluation",
        "qaclip_harness/metrics/retrieval.py",
        "    i2t_frac = [i2t_counts[r] * 1.0 / len(query_ids) for r in ks]",
        "    i2t_frac = [i2t_counts[r] * 1.0 / len(image_ids) for r in ks]",
        "image-to-text recall divided by every image, not by the images some caption describes (the distractors')",
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
    # ---- outside what a hand-kept feature path named: loading, the suite, the export, decoding,
    # data identity, the environment
    Mutant(
        "load-cpu-bf16",
        "loading",
        S,
        "                device=self.device,\n                precision=self.precision,",
        '                device=self.device,\n                precision="bf16" if self.device in ("auto", "cpu") else self.precision,',
        "the suite loads models in bf16 on the CPU (to save memory), whatever --precision says",
    ),
    Mutant(
        "suite-encoder-reuse",
        "suite",
        S,
        "key = (card.name, self.device, self.precision, self.compile, backend)",
        "key = (self.device, self.precision, self.compile, backend)",
        "the suite keeps the loaded model for the next card (its key forgets the card)",
    ),
    Mutant(
        "export-image-flip",
        "export",
        "qaclip_harness/export/onnx.py",
        "        return self.model.encode_image(image)",
        "        return self.model.encode_image(image.flip(-1))",
        "the exported image tower mirrors its input (a layout slip in the export wrapper)",
    ),
    Mutant(
        "decode-draft",
        "decoding",
        "qaclip_harness/data/imagenet.py",
        '        return image.convert("RGB")',
        '        image.draft("RGB", (image.width // 2, image.height // 2))\n        return image.convert("RGB")',
        "class-folder JPEGs decoded at half scale (PIL's draft mode, a speed-up)",
    ),
    Mutant(
        "identity-head",
        "data identity",
        "qaclip_harness/data/fingerprint.py",
        "    return hashlib.sha256(data).digest()",
        "    return hashlib.sha256(data[:4096]).digest()",
        "an image's digest hashes its first 4 KB only (a speed-up): the data fingerprint changes",
        expect="same",
    ),
    Mutant(
        "env-aten-default",
        "environment",
        "",
        "",
        "",
        "ATEN_CPU_CAPABILITY=default: ATen's scalar kernels instead of AVX2 (other low bits everywhere)",
        env=(("ATEN_CPU_CAPABILITY", "default"),),
        expect="same",
    ),
]
# The subset CI runs (tests/harness/test_cache_mutations.py): one mutant of every area a hand-kept
# key missed, and one of the metrics (an inert file: its warm run reuses every feature). Each runs,
# cold and warm, the cases of the area it touches (CPU time: a whole suite run cold and warm for
# each would cost CI about twenty minutes); the unmutated runs that fill the warm cache run them all.
CI = {
    "load-cpu-bf16": "reference or fixture-shapes and not hf",
    "suite-encoder-reuse": "fixture-shapes and not hf",
    "export-image-flip": "onnx-parity",
    "decode-draft": "fixture-shapes-cls and not hf",
    "identity-head": "fixture-shapes and not hf",
    "env-aten-default": "reference or fixture-shapes and not hf",
    "eval-recall-off-by-one": "fixture-shapes and not hf",
}


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
        target = dest / rel
        if src.is_symlink():  # qaclip_harness/expected_numbers -> ../expected: the link, not a copy
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(src))
            continue
        if not src.is_file():  # deleted in the working tree
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def apply(tree: Path, mutant: Mutant) -> None:
    """Apply ``mutant`` to the copy ``tree`` (ValueError unless its text occurs exactly once); nothing for a variable."""
    if not mutant.path:
        return
    path = tree / mutant.path
    text = path.read_text(encoding="utf-8")
    n = text.count(mutant.old)
    if n != 1:
        raise ValueError(f"{mutant.name}: {mutant.path} holds its text {n} times (expected once): update the mutant")
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")


HIDE_CN_CLIP = (
    "import sys\nsys.modules['cn_clip'] = None  # hidden by tools/mutation_check.py: the gate must not need it\n"
)


@dataclass
class Run:
    """One suite run: its exit code, each case's verdict, its seconds and the tail of its output."""

    rc: int
    cases: dict[str, dict]  # case id -> {status, measured, data, features}
    seconds: float
    tail: str
    cpu: float = 0.0  # CPU seconds (user + system) of the run: on a shared machine, steadier than its wall time

    @property
    def red(self) -> list[str]:
        """Cases a gate failed (a verdict)."""
        return sorted(c for c, v in self.cases.items() if v["status"] == "failed")

    @property
    def broken(self) -> list[str]:
        """Why the run gave no verdict where it should: an import or collection error, a crash, a timeout, errored cases."""
        why = [f"{c}: error" for c, v in sorted(self.cases.items()) if v["status"] == "error"]
        if self.rc == -1:
            why.insert(0, "timed out")
        elif self.rc not in (0, 1):
            why.insert(0, f"pytest exit code {self.rc} (collection, import or usage error)")
        elif not self.cases:
            why.insert(0, "no report (the run crashed)")
        return why


def verdicts(report: Path) -> dict[str, dict]:
    """Each case of ``report/report.json``: its status, numbers, data fingerprint and features' digests."""
    try:
        results = json.loads((report / "report.json").read_text(encoding="utf-8"))["results"]
    except (OSError, ValueError, KeyError):
        return {}
    out = {}
    for r in results:
        case = "-".join(str(r.get(k)) for k in ("dataset", "model", "variant") if r.get(k))
        steps = (r.get("features") or {}).get("steps") or {}
        out[case] = {
            "status": r.get("status"),
            "measured": r.get("measured") or {},
            "checks": [(c.get("metric"), c.get("measured"), c.get("ok")) for c in r.get("checks") or []],
            "data": r.get("data_fingerprint"),
            "features": {step: p.get("sha256") for step, p in sorted(steps.items())},
        }
    return out


def run_suite(
    tree: Path,
    cache: Path,
    report: Path,
    with_cn_clip: bool,
    timeout: int,
    env_extra: dict[str, str],
    select: str = "",
) -> Run:
    """``pytest benchmarks -m "not throughput" [-k select] --report report`` in ``tree`` with the package cache ``cache``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QACLIP_")}
    env["QACLIP_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(tree)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(env_extra)
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
        "--report",
        str(report),
    ] + (["-k", select] if select else [])
    start, used = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        rc, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = -1, f"timed out after {timeout}s\n{e.stdout or ''}"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - used.ru_utime) + (after.ru_stime - used.ru_stime)
    return Run(rc, verdicts(report), time.perf_counter() - start, "\n".join(text.splitlines()[-15:]), cpu)


def differences(cold: Run, warm: Run) -> list[str]:
    """Where the warm run differs from the cold one, case by case: verdict, numbers, data, features."""
    out = []
    for case in sorted(set(cold.cases) | set(warm.cases)):
        c, w = cold.cases.get(case), warm.cases.get(case)
        if c is None or w is None:
            out.append(f"{case}: only in the {'warm' if c is None else 'cold'} run")
            continue
        for what in ("status", "measured", "checks", "data", "features"):
            if c[what] != w[what]:
                out.append(f"{case}: {what} cold {c[what]!r}, warm {w[what]!r}"[:400])
    if (cold.rc == 0) != (warm.rc == 0):
        out.append(f"exit code cold {cold.rc}, warm {warm.rc}")
    return out


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


@dataclass
class Row:
    """One mutant's outcome."""

    mutant: Mutant
    cold: Run
    warm: Run
    diff: list[str]

    @property
    def verdict(self) -> str:
        """killed, survived, broken (no verdict: listed apart) or matched (a ``same`` mutant)."""
        if self.cold.red:
            return "killed"
        if self.cold.broken:
            return "broken"
        return "matched" if self.mutant.expect == "same" else "survived"

    @property
    def ok(self) -> bool:
        """Killed (or matched, for a ``same`` mutant) with the warm run equal to the cold one."""
        return not self.diff and self.verdict in ("killed", "matched") and not self.cold.broken


def selected(only: str, ci: bool) -> list[Mutant]:
    """The mutants asked for (all, ``--only`` names, or the CI subset)."""
    names = set(CI) if ci else set(only.split(",")) if only else None
    if names is None:
        return list(MUTANTS)
    unknown = names - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutants {sorted(unknown)}; --list shows them")
    return [m for m in MUTANTS if m.name in names]


def table(rows: list[Row]) -> str:
    """The Markdown table of the outcomes."""
    lines = [
        "| mutant | area | regression | cold | red case(s) | warm = cold | seconds cold, warm (CPU seconds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        red = ", ".join(r.cold.red) or ("; ".join(r.cold.broken)[:120] if r.cold.broken else "-")
        same = "yes" if not r.diff else f"**no** ({len(r.diff)} differences)"
        verdict = r.verdict if r.verdict in ("killed", "matched") else f"**{r.verdict}**"
        lines.append(
            f"| {r.mutant.name} | {r.mutant.area} | {r.mutant.what} | {verdict} | {red} | {same} | "
            f"{r.cold.seconds:.0f}, {r.warm.seconds:.0f} ({r.cold.cpu:.0f}, {r.warm.cpu:.0f}) |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the unmutated tree and the mutants, each cold and warm; print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated mutant names")
    p.add_argument(
        "--ci",
        action="store_true",
        help="the subset CI runs: one mutant of each area outside the old key, and the metrics, each on its cases",
    )
    p.add_argument("--select", default="", help="a pytest -k expression: run only these cases (cold and warm)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument(
        "--with-cn-clip", action="store_true", help="leave cn_clip importable (the live parity-* cases then run)"
    )
    p.add_argument("--timeout", type=int, default=1800, help="seconds for one suite run")
    p.add_argument("--keep", action="store_true", help="keep the copies and reports (their folder is printed)")
    p.add_argument("--json", type=Path, help="also write every outcome (verdicts, differences) to this file")
    args = p.parse_args(argv)
    mutants = selected(args.only, args.ci)
    select = args.select
    if args.list:
        for m in mutants:
            print(f"{m.name:<24}{m.area:<15}{m.path or dict(m.env)}: {m.what}{' [same]' if m.expect == 'same' else ''}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="qaclip-mutants-"))
    rows: list[Row] = []
    try:
        base = work / "base"  # one snapshot: later edits of the working tree do not leak into the run
        copy_tree(base)
        for m in mutants:  # every mutant must still apply before an hour of runs starts
            if m.path and (base / m.path).read_text(encoding="utf-8").count(m.old) != 1:
                raise SystemExit(f"{m.name}: {m.path} no longer holds its text exactly once: update the mutant")
        tree = work / "unmutated"
        shutil.copytree(base, tree)
        check_imports(tree)
        warm_cache = work / "warm-cache"
        reports = work / "reports"
        cold = run_suite(tree, warm_cache, reports / "unmutated-cold", args.with_cn_clip, args.timeout, {}, select)
        warm = run_suite(tree, warm_cache, reports / "unmutated-warm", args.with_cn_clip, args.timeout, {}, select)
        diff = differences(cold, warm)
        print(
            f"unmutated: cold {'green' if cold.rc == 0 else 'RED'} in {cold.seconds:.0f}s ({cold.cpu:.0f} CPU s), warm "
            f"{'green' if warm.rc == 0 else 'RED'} in {warm.seconds:.0f}s ({warm.cpu:.0f} CPU s), {len(cold.cases)} cases, "
            f"warm {'=' if not diff else '!='} cold",
            flush=True,
        )
        if cold.rc != 0 or warm.rc != 0 or diff or not cold.cases:
            print(cold.tail if cold.rc else warm.tail)
            print("\n".join(diff[:20]))
            print("the unmutated tree is not green and equal warm and cold: nothing to measure")
            return 2
        for m in mutants:
            tree = work / m.name
            shutil.copytree(base, tree)
            apply(tree, m)
            env = dict(m.env)
            reports = work / "reports" / m.name
            cold_cache = work / f"{m.name}-cold-cache"
            cases = select or (CI[m.name] if args.ci else "")
            cold = run_suite(tree, cold_cache, reports / "cold", args.with_cn_clip, args.timeout, env, cases)
            cache = work / f"{m.name}-warm-cache"
            shutil.copytree(warm_cache, cache, symlinks=True)  # the correct code's cache, fresh for each mutant
            warm = run_suite(tree, cache, reports / "warm", args.with_cn_clip, args.timeout, env, cases)
            row = Row(m, cold, warm, differences(cold, warm))
            rows.append(row)
            print(
                f"{m.name}: {row.verdict} ({', '.join(cold.red) or '; '.join(cold.broken) or '-'}); warm "
                f"{'= cold' if not row.diff else '!= cold'} [{cold.seconds:.0f}s + {warm.seconds:.0f}s]",
                flush=True,
            )
            for line in row.diff[:10]:
                print(f"    {line}")
            if row.verdict in ("broken", "survived"):
                print(cold.tail, flush=True)
            if not args.keep:
                for path in (tree, cold_cache, cache):
                    shutil.rmtree(path, ignore_errors=True)
    finally:
        if args.keep:
            print(f"copies and reports kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(rows))
    killed = [r for r in rows if r.verdict == "killed"]
    matched = [r for r in rows if r.verdict == "matched"]
    broken = [r.mutant.name for r in rows if r.verdict == "broken"]
    survived = [r.mutant.name for r in rows if r.verdict == "survived"]
    unequal = [r.mutant.name for r in rows if r.diff]
    print(
        f"\n{len(killed)} of {len(rows) - len(matched)} killed by a gate's verdict"
        + (f"; {len(matched)} cache mutants matched" if matched else "")
        + (f"; survived: {', '.join(survived)}" if survived else "")
        + (f"; broken (no verdict, not counted): {', '.join(broken)}" if broken else "")
        + f"; warm = cold for {len(rows) - len(unequal)} of {len(rows)}"
        + (f" (differs: {', '.join(unequal)})" if unequal else "")
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "mutant": r.mutant.name,
                        "verdict": r.verdict,
                        "red": r.cold.red,
                        "broken": r.cold.broken,
                        "differences": r.diff,
                        "seconds": [round(r.cold.seconds, 1), round(r.warm.seconds, 1)],
                        "cpu_seconds": [round(r.cold.cpu, 1), round(r.warm.cpu, 1)],
                    }
                    for r in rows
                ],
                indent=1,
            ),
            encoding="utf-8",
        )
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
