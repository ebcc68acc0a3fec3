"""Result tables, written as Markdown (terminal, ``.md`` files) or HTML (reports) from one :class:`Table`."""

import html
from dataclasses import dataclass, field
from typing import List


@dataclass
class Table:
    header: List[str]
    rows: List[List[str]] = field(default_factory=list)

    def add(self, *cells) -> None:
        if len(cells) != len(self.header):
            raise ValueError(f"a row of {len(cells)} cells for {len(self.header)} columns: {cells}")
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><tr>{head}</tr>{body}</table>"
