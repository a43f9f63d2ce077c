"""The README's benchmark tables, rewritten by the runs that produce them.

The README marks each generated block with a pair of HTML comments,
``<!-- bench:NAME:start -->`` ... ``<!-- bench:NAME:end -->``; a full run (the one
``make bench`` makes, writing to ``benchmarks/``) replaces what is between them, so the
front page never shows figures that no run produced. Partial runs (``--only``, ``--out``,
fewer rounds) leave the README alone.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_section(name: str, text: str, readme: Path = README) -> bool:
    """Put ``text`` between the ``name`` markers; False (README untouched) without them."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    content = readme.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(content):
        return False
    block = f"{start}\n{text.strip()}\n{end}"
    readme.write_text(pattern.sub(lambda _: block, content, count=1))
    return True


def main_table(results_md: str) -> str:
    """The main table of results.md with its legend and references (up to the per-row
    notes that follow them)."""
    lines = results_md.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| metric |"))
    # When, where and how: the run's own lines, kept above the table.
    keep = [line for line in lines[:first] if line.startswith(("Run started", "Command:",
                                                                "Machine:"))]
    keep = [" ".join(keep), ""] if keep else []
    for line in lines[first:]:
        if line.startswith(("Tasks per drain row", "Round trips timed", "**")):
            break  # sizes and distributions: in benchmarks/results.md only
        keep.append(line)
    return "\n".join(keep)
