"""The README's quick start runs as written (only the Redis URL points at the test server)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"
QUICKSTART_URL = "redis://localhost:6379/0"


def block_after(text: str, label: str) -> str:
    """The first ```python block after the line ``label``."""
    match = re.search(re.escape(label) + r"\s*```python\n(.*?)```", text, re.S)
    assert match, f"no python block after {label!r} in README.md"
    return match.group(1)


def test_quick_start_runs_as_written(tmp_path: Path, redis_url: str) -> None:
    text = README.read_text()
    assert "make test" in text.split("## Quick start")[0]
    assert "make demo" in text.split("## Quick start")[0]
    tasks = block_after(text, "`tasks.py`:")
    client = block_after(text, "`client.py`:")
    assert QUICKSTART_URL in tasks
    (tmp_path / "tasks.py").write_text(tasks.replace(QUICKSTART_URL, redis_url))
    (tmp_path / "client.py").write_text(client)
    assert "aioqueue worker tasks:app -l info" in text
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "aioqueue", "worker", "tasks:app", "-l", "info"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client_run = subprocess.run([sys.executable, "client.py"], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=60, check=False)
        assert client_run.returncode == 0, client_run.stderr
        assert client_run.stdout.strip() == "3"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
