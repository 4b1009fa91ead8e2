"""``example-<model>``: the READMEs' inference example through the public API, against published probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from PIL import Image

from qaclip_core.errors import QAClipError
from qaclip_core.registry import ModelCard


@dataclass(frozen=True)
class ExampleSpec:
    """What one model's example runs on and what it is held to."""

    model: str
    image: str  # a probe-set image name
    labels: list[str]
    source: str = ""  # citation of the numbers
    probabilities: list[float] | None = None  # published, in label order
    argmax: int | None = None  # the label that must win
    tolerance: float | None = None
    precisions: Sequence[str] = ()  # where ``tolerance`` applies
    why: str = ""

    @property
    def expected_argmax(self) -> int | None:
        """The winning label: given, or that of the published probabilities."""
        if self.argmax is not None:
            return self.argmax
        if self.probabilities is not None:
            return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)
        return None


def load_example_specs(path: str | Path) -> dict[str, ExampleSpec]:
    """Per model the example's inputs and expectations from ``expected/example/api-example.yaml``; key ``""`` is the default."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise QAClipError(f"{path}: cannot read the example expectations ({type(e).__name__}: {e})") from e
    for key in ("image", "labels", "sources", "tolerance", "models"):
        if key not in (doc or {}):
            raise QAClipError(f"{path}: missing top-level key {key!r}")
    tol = doc["tolerance"]
    specs = {"": ExampleSpec("", str(doc["image"]), [str(x) for x in doc["labels"]])}
    for model, entry in (doc["models"] or {}).items():
        source = entry.get("source")
        if source not in doc["sources"]:
            raise QAClipError(f"{path}: model {model!r} cites source {source!r}, not one of {sorted(doc['sources'])}")
        labels = [str(x) for x in entry.get("labels", doc["labels"])]
        probs = entry.get("probabilities")
        if probs is not None and len(probs) != len(labels):
            raise QAClipError(f"{path}: model {model!r} has {len(probs)} probabilities for {len(labels)} labels")
        argmax = entry.get("argmax")
        if argmax is not None and not 0 <= int(argmax) < len(labels):
            raise QAClipError(f"{path}: model {model!r} argmax {argmax} is not a label index (0..{len(labels) - 1})")
        specs[model] = ExampleSpec(
            model,
            str(entry.get("image", doc["image"])),
            labels,
            str(doc["sources"][source]).strip(),
            [float(p) for p in probs] if probs is not None else None,
            int(argmax) if argmax is not None else None,
            float(tol["abs"]),
            tuple(tol.get("precisions") or ()),
            str(tol.get("why", "")).strip(),
        )
    return specs


def load_example_folder(folder: str | Path, default: str = "api-example.yaml") -> dict[str, ExampleSpec]:
    """Every model's example spec from the YAML files of ``folder`` (each file's own image, labels and tolerance).

    ``default`` supplies the inputs of models listed nowhere; a model listed in two files is an error.
    """
    folder = Path(folder)
    specs = load_example_specs(folder / default)
    seen = {m: default for m in specs if m}
    for path in sorted(folder.glob("*.yaml")):
        if path.name == default:
            continue
        for model, spec in load_example_specs(path).items():
            if not model:
                continue
            if model in seen:
                raise QAClipError(f"{path}: model {model!r} is also listed in {folder / seen[model]}")
            seen[model] = path.name
            specs[model] = spec
    return specs


def spec_for(specs: dict[str, ExampleSpec], model: str) -> ExampleSpec:
    """The spec of ``model``, or the default inputs with nothing to gate on."""
    if model in specs:
        return specs[model]
    default = specs[""]
    return ExampleSpec(model, default.image, default.labels)


def run_native_example(
    checkpoint: str | Path,
    card: ModelCard,
    image: Image.Image,
    labels: Sequence[str],
    device: str | torch.device,
    precision: str,
) -> list[float]:
    """The README example, statement for statement, through ``load_from_name``, ``preprocess``, ``tokenize``, ``get_similarity``."""
    import qaclip_core as clip

    model, preprocess = clip.load_from_name(
        str(checkpoint), device=device, vision_model_name=card.vision, text_model_name=card.text, precision=precision
    )
    model.eval()
    dev = next(model.parameters()).device
    pixels = preprocess(image).unsqueeze(0).to(dev)
    text = clip.tokenize(list(labels)).to(dev)
    with torch.no_grad():
        logits_per_image, _ = model.get_similarity(pixels, text)
        probs = logits_per_image.softmax(dim=-1).cpu()
    return [float(p) for p in probs[0]]


def run_encoder_example(encoder, image: Image.Image, labels: Sequence[str]) -> list[float]:
    """The same computation for any :class:`Encoder` (its preprocessing, tokenizer and logit scale)."""
    from qaclip_harness.tensors import normalise

    with torch.no_grad():
        img = normalise(encoder.encode_image(encoder.preprocess(image).unsqueeze(0)))
        txt = normalise(encoder.encode_text(encoder.tokenize(list(labels))))
        scale = getattr(getattr(encoder, "model", None), "logit_scale", None)
        scale = float(scale.float().exp()) if scale is not None else 100.0
        probs = (scale * img @ txt.t()).softmax(dim=-1)
    return [float(p) for p in probs[0]]


@dataclass
class ExampleReport:
    """The example's probabilities and how they compare with the published ones."""

    spec: ExampleSpec
    precision: str
    probabilities: list[float]
    rows: list[dict] = field(default_factory=list)  # one per label: measured, published, delta, tolerance, ok

    @property
    def argmax(self) -> int:
        """The label with the highest probability."""
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    @property
    def argmax_ok(self) -> bool | None:
        """Whether the winning label is the expected one (None when nothing is expected)."""
        want = self.spec.expected_argmax
        return None if want is None else self.argmax == want

    @property
    def gated(self) -> bool:
        """Whether the probabilities themselves are held to a tolerance at this precision."""
        return self.spec.probabilities is not None and self.precision in self.spec.precisions

    @property
    def ok(self) -> bool:
        """Argmax as expected and every gated probability within tolerance."""
        return self.argmax_ok is not False and all(r["ok"] for r in self.rows if r["gated"])

    def table(self) -> str:
        """label, measured, published, delta, tolerance per label, then the argmax line."""
        lines = [f"{'label':<14}{'measured':>14}{'published':>14}{'delta':>12}{'tol':>9}"]
        for r in self.rows:
            pub = f"{r['expected']:.6e}" if r["expected"] is not None else "-"
            delta = f"{r['delta']:+.2e}" if r["delta"] is not None else "-"
            tol = f"{r['tolerance']:.1e}" if r["gated"] else "-"
            mark = "" if not r["gated"] else ("  ok" if r["ok"] else "  FAIL")
            lines.append(f"{r['label']:<14}{r['measured']:>14.6e}{pub:>14}{delta:>12}{tol:>9}{mark}")
        want = self.spec.expected_argmax
        got = self.spec.labels[self.argmax]
        if want is None:
            lines.append(f"argmax {got} (nothing published for this model: reported only)")
        else:
            lines.append(f"argmax {got}, expected {self.spec.labels[want]}" + ("" if self.argmax_ok else "  FAIL"))
        if self.spec.probabilities is not None and not self.gated:
            lines.append(f"probabilities not gated at {self.precision} (gated at {', '.join(self.spec.precisions)})")
        return "\n".join(lines)


def check_example(spec: ExampleSpec, probabilities: Sequence[float], precision: str) -> ExampleReport:
    """Compare the example's probabilities with ``spec``."""
    if len(probabilities) != len(spec.labels):
        raise ValueError(f"{len(probabilities)} probabilities for {len(spec.labels)} labels")
    report = ExampleReport(spec, precision, [float(p) for p in probabilities])
    for i, label in enumerate(spec.labels):
        exp = spec.probabilities[i] if spec.probabilities is not None else None
        delta = report.probabilities[i] - exp if exp is not None else None
        gated = report.gated
        report.rows.append(
            {
                "label": label,
                "measured": report.probabilities[i],
                "expected": exp,
                "delta": delta,
                "tolerance": spec.tolerance if gated else None,
                "gated": gated,
                "ok": (not gated)
                or (delta is not None and spec.tolerance is not None and abs(delta) <= spec.tolerance),
            }
        )
    return report
