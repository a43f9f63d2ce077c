"""The public door: ``aioqueue.__all__`` and what the package really exports agree."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import aioqueue

PACKAGE = Path(aioqueue.__file__).parent


def test_all_lists_exactly_the_public_names() -> None:
    # "@py_*" come from pytest's assertion rewriting, "annotations" from the __future__ import.
    public = {name for name in dir(aioqueue) if not name.startswith(("_", "@"))}
    public.discard("annotations")
    submodules = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir()
                                                           if p.is_dir()}
    assert set(aioqueue.__all__) - {"__version__"} == public - submodules


def test_every_public_name_has_a_docstring() -> None:
    for name in aioqueue.__all__:
        obj = getattr(aioqueue, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_errors_share_one_root() -> None:
    for name in aioqueue.__all__:
        obj = getattr(aioqueue, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, aioqueue.AioQueueError), name


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_third_party_libraries_stay_behind_their_doors() -> None:
    """``redis`` only in the Redis broker; ``typer`` only in the CLI; nothing imports cli."""
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        imported = _imports(path)
        if "redis" in imported:
            assert rel == "broker/redis.py", rel
        if "typer" in imported:
            assert rel == "cli.py", rel
        source = path.read_text()
        if rel != "__main__.py":
            assert "from .cli" not in source and "from ..cli" not in source, rel
