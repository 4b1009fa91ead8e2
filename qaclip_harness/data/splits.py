"""Published split sizes: data of another size is caught before any encoding, with its likely cause.

Wrong or partial splits are the commonest cause of "cannot reproduce" reports (Chinese-CLIP
issues #15, #35, #80, #154, #175, #179, #183): the validation split instead of the test split,
one caption per image, a partial download or extract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from qaclip_harness.errors import DatasetError


class SplitMismatchError(DatasetError):
    """The data does not have the published size of the split its numbers were measured on."""

    def __init__(self, message: str, check: SplitCheck):
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class SplitCheck:
    """Published and found counts of one split, and what a difference most likely means."""

    dataset: str
    split: str
    expected: dict[str, int]
    found: dict[str, int]
    cause: str | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every published count is the one found."""
        return all(self.found.get(k) == v for k, v in self.expected.items())

    def describe(self) -> str:
        """One line: expected and found counts, and the likely cause."""
        pairs = ", ".join(f"{k}: expected {v:,}, found {self.found.get(k, 0):,}" for k, v in self.expected.items())
        return f"{self.dataset} split {self.split!r} does not have its published size ({pairs})" + (
            f"; likely cause: {self.cause}" if self.cause else ""
        )

    def as_dict(self) -> dict:
        """JSON-ready form (with ``ok``)."""
        return dict(asdict(self), ok=self.ok)


def likely_cause(expected: dict[str, int], found: dict[str, int]) -> str:
    """The most likely reason data has other counts than the published split."""
    images, texts = found.get("images", 0), found.get("texts")
    exp_images, exp_texts = expected.get("images", 0), expected.get("texts")
    if texts is not None and exp_texts and texts == images and exp_texts > exp_images:
        return (
            f"one caption per image: the published split has {exp_texts / max(1, exp_images):.1f} captions per image "
            "(a jsonl built from another caption file?)"
        )
    if "classes" in expected and found.get("classes") != expected["classes"]:
        return "another class list: the class folders or the label file are not those of the published set"
    smaller = all(found.get(k, 0) <= v for k, v in expected.items())
    larger = all(found.get(k, 0) >= v for k, v in expected.items())
    if smaller:
        return "a partial download or extract, or a subset of the split (compare the file sizes with the archive's)"
    if larger:
        return "another, larger split (train?) or several splits merged"
    return "another split or another build of the dataset (valid instead of test?)"


def check_split(dataset: str, split: str, expected: dict[str, int] | None, found: dict[str, int]) -> SplitCheck | None:
    """Compare ``found`` with the published ``expected`` counts (None when nothing is published)."""
    if not expected:
        return None
    check = SplitCheck(dataset, split, dict(expected), dict(found))
    if check.ok:
        return check
    return SplitCheck(dataset, split, dict(expected), dict(found), cause=likely_cause(expected, found))
