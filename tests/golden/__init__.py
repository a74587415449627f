"""Reader for the golden case files in ``tests/golden/*/``; ``README.md`` there has the format."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

CURSOR = "█"
END_OF_LINE = "⏎"  # alone on a section's last line: the section ends with a line break
HERE = Path(__file__).parent


@dataclass(frozen=True)
class Case:
    """One ``### title`` block: ``key: value`` headers and ``--- name`` sections."""

    title: str
    language: str
    headers: dict[str, str]
    sections: dict[str, str]

    @property
    def text_and_offset(self) -> tuple[str, int]:
        """The ``document`` section without its cursor mark, and the cursor's offset."""
        document = self.sections["document"]
        if document.count(CURSOR) != 1:
            raise ValueError(f"{self.title}: the document needs exactly one {CURSOR}")
        if self.headers.get("line_ending") == "crlf":
            document = document.replace("\n", "\r\n")
        return document.replace(CURSOR, ""), document.index(CURSOR)

    def literal(self, key: str) -> object:
        """A header written as a Python literal, e.g. ``indent: "\\t"``."""
        return ast.literal_eval(self.headers[key])


def read_cases(directory: str) -> list[Case]:
    """All cases of ``tests/golden/<directory>/*.txt``; a file's stem is its languageId."""
    cases = []
    for path in sorted((HERE / directory).glob("*.txt")):
        for block in ("\n" + path.read_text(encoding="utf-8")).split("\n### ")[1:]:
            head, *sections = block.split("\n--- ")
            title, *header_lines = head.splitlines()
            headers = dict(line.split(": ", 1) for line in header_lines if line.strip())
            named = {}
            for section in sections:
                name, _, body = section.partition("\n")
                body = body.rstrip("\n")  # blank lines only separate cases
                named[name.strip()] = body.removesuffix(END_OF_LINE)
            cases.append(Case(title.strip(), headers.pop("language", path.stem), headers, named))
    return cases
