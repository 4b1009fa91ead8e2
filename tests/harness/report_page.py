"""Reading report.html back: a small element tree from the standard library's HTML parser, for the report's tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"meta", "link", "br", "hr", "img", "input", "source", "area", "base", "col", "embed", "wbr"}


@dataclass
class Element:
    """One element: tag, attributes, its own text and its children."""

    tag: str
    attrs: dict[str, str]
    parent: Element | None = None
    children: list[Element] = field(default_factory=list)
    own_text: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """All text inside, concatenated."""
        return "".join(self.own_text) + "".join(c.text for c in self.children)

    @property
    def classes(self) -> list[str]:
        """The class attribute's words."""
        return self.attrs.get("class", "").split()

    def iter(self) -> Iterator[Element]:
        """This element and every descendant, in document order."""
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **data: str) -> list[Element]:
        """Descendants by tag, class and ``data-*`` attributes (``data_model="x"`` matches ``data-model="x"``)."""
        want = {k.replace("_", "-"): v for k, v in data.items()}
        return [
            e
            for e in self.iter()
            if (tag is None or e.tag == tag)
            and (cls is None or cls in e.classes)
            and all(e.attrs.get(k) == v for k, v in want.items())
        ]

    def by_id(self, ident: str) -> Element:
        """The one descendant with this id."""
        (found,) = [e for e in self.iter() if e.attrs.get("id") == ident]
        return found


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        el = Element(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(el)
        if tag not in VOID:
            self.current = el

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Element(tag, {k: v or "" for k, v in attrs}, parent=self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.own_text.append(data)


def parse(text: str) -> Element:
    """The element tree of an HTML document."""
    b = _Builder()
    b.feed(text)
    b.close()
    return b.root
