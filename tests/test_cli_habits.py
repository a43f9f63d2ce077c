"""A Celery user's command-line habits work: ``-A proj``, ``call -a/-k``, ``--version``,
import errors that point at the user's line, clean ``--help``, Django set up first, and
``--max-tasks-per-child`` / ``--max-memory-per-child`` recycling worker processes.

Workers run as users run them, in subprocesses (from ``tests/cli_projects``); what needs no
worker runs in-process through Typer's ``CliRunner`` against throwaway modules in
``tmp_path``.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

import aioqueue
from aioqueue import AioQueue
from aioqueue.cli import cli
from tests.cli_worker import Lines

PROJECTS = Path(__file__).parent / "cli_projects"


# -- helpers -----------------------------------------------------------------------------------
def cli_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CLI_REDIS_URL": redis_url, **extra}
    if "DJANGO_SETTINGS_MODULE" not in extra:
        env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path = PROJECTS,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aioqueue", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def start_cli(args: list[str], env: dict[str, str], cwd: Path = PROJECTS
              ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "aioqueue", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; whatever still runs at the end is killed (with its group)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def stop(process: subprocess.Popen[str], *readers: Lines) -> list[str]:
    """SIGTERM, expect a clean exit; returns what each reader collected."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    return [reader.join() for reader in readers]


Invoke = Callable[..., Result]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
            ) -> Iterator[tuple[Path, Invoke]]:
    """An empty project directory as the working directory, and ``invoke(*args)`` running the
    CLI in-process; modules imported from it are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLI_REDIS_URL", redis_url)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, list(args))

    yield tmp_path, invoke
    for name in set(sys.modules) - before:
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def app_module(queue: str, attribute: str = "app", extra: str = "") -> str:
    """A module whose AioQueue is named ``attribute`` and consumes ``queue`` by default, so
    ``status`` (which prints the default queue) tells which app was found."""
    return (f"import os\nfrom aioqueue import AioQueue\n{extra}\n"
            f"{attribute} = AioQueue('t', broker=os.environ['CLI_REDIS_URL'], "
            f"task_default_queue={queue!r})\n\n"
            f"@{attribute}.task\nasync def add(x, y):\n    return x + y\n")


# -- finding the app ---------------------------------------------------------------------------
FINDABLE = {
    "attr_app.py": app_module("q-attr-app"),
    "attr_celery.py": app_module("q-attr-celery", "celery"),
    "scanned.py": app_module("q-scanned", "queue_app"),
    "pkg_sub/__init__.py": "",
    "pkg_sub/celery.py": app_module("q-pkg-sub"),
    "flaskproj.py": app_module("q-flaskproj", "celery_app",
                               "from flask import Flask\napp = Flask(__name__)"),
    "flaskonly.py": "from flask import Flask\napp = Flask(__name__)\n",
}


@pytest.mark.parametrize(
    ("args", "queue"),
    [
        (["-A", "attr_app", "status"], "q-attr-app"),            # proj -> proj.app
        (["-A", "attr_app:app", "status"], "q-attr-app"),
        (["-A", "attr_app.app", "status"], "q-attr-app"),
        (["status", "-A", "attr_app"], "q-attr-app"),            # -A after the command
        (["status", "attr_app:app"], "q-attr-app"),              # aioqueue's positional
        (["-A", "attr_celery", "status"], "q-attr-celery"),      # proj -> proj.celery
        (["-A", "pkg_sub", "status"], "q-pkg-sub"),              # proj -> module proj.celery
        (["-A", "pkg_sub.celery", "status"], "q-pkg-sub"),
        (["-A", "scanned", "status"], "q-scanned"),              # the module's only AioQueue
        (["-A", "flaskproj", "status"], "q-flaskproj"),          # app is Flask: looks further
        (["-A", "attr_app", "dead", "list"], "q-attr-app"),
    ],
)
def test_dash_a_finds_the_app_as_celery_does(project: tuple[Path, Invoke], args: list[str],
                                             queue: str) -> None:
    root, invoke = project
    write(root, FINDABLE)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert queue in result.stdout


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("flaskonly", "flaskonly.app is a flask.app.Flask, not an AioQueue; name the aioqueue "
                      "app e.g. `celery_app` and pass -A flaskonly:celery_app"),
        ("flaskonly.app", "flaskonly.app is a flask.app.Flask, not an AioQueue; name the "
                          "aioqueue app e.g. `celery_app` and pass -A flaskonly:celery_app"),
        ("flaskproj:app", "flaskproj:app is a flask.app.Flask, not an AioQueue; did you mean "
                          "flaskproj:celery_app?"),
        ("attr_app.nothing", "module 'attr_app' has no attribute 'nothing' and there is no "
                             "module 'attr_app.nothing'"),
        ("no such", "'no such' is not MODULE:ATTRIBUTE nor a module name (for example proj, "
                    "proj:app or proj.app)"),
    ],
)
def test_a_name_taken_by_something_else_is_a_clear_error(
    project: tuple[Path, Invoke], target: str, message: str
) -> None:
    root, invoke = project
    write(root, FINDABLE)
    result = invoke("-A", target, "status")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {message}"


def test_two_different_apps_or_none_are_refused(project: tuple[Path, Invoke]) -> None:
    root, invoke = project
    write(root, FINDABLE)
    both = invoke("-A", "attr_app", "status", "scanned")
    assert both.exit_code == 2 and "two apps given" in both.stderr
    none = invoke("status")
    assert none.exit_code == 2 and "which app? pass -A" in none.stderr


# -- import errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("files", "target", "where", "error"),
    [
        ({"nameerr/__init__.py": "from . import helpers\n",
          "nameerr/helpers.py": "import os\n\nVALUE = undefined_thing + 1\n"},
         "nameerr", ("nameerr/helpers.py", 3, "VALUE = undefined_thing + 1"),
         "NameError: name 'undefined_thing' is not defined"),
        ({"syntaxerr.py": "import os\ndef broken(:\n    pass\n"},
         "syntaxerr", ("syntaxerr.py", 2, "def broken(:"), "SyntaxError: "),
        ({"missingdep.py": "import os\nimport not_a_real_dependency_xyz\n"},
         "missingdep", ("missingdep.py", 2, "import not_a_real_dependency_xyz"),
         "ModuleNotFoundError: No module named 'not_a_real_dependency_xyz'"),
        # Raised inside the standard library: the user's line that called it is shown.
        ({"badjson.py": "import json\n\nCONFIG = json.loads('{')\n"},
         "badjson", ("badjson.py", 3, "CONFIG = json.loads('{')"), "json.decoder.JSONDecodeError"),
        # In a module of the app's include=[...], imported before the worker starts.
        ({"withinclude.py": app_module("q", extra="").replace(
            "task_default_queue='q'", "include=['withinclude_tasks']"),
          "withinclude_tasks.py": "from withinclude import app\n\n\nraise RuntimeError('boom')\n"},
         "withinclude", ("withinclude_tasks.py", 4, "raise RuntimeError('boom')"),
         "RuntimeError: boom"),
    ],
)
def test_import_errors_point_at_the_users_file_and_line(
    project: tuple[Path, Invoke], files: dict[str, str], target: str,
    where: tuple[str, int, str], error: str,
) -> None:
    root, invoke = project
    write(root, files)
    result = invoke("-A", target, "call", "withinclude.add", "-a", "[1, 2]")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    path, line, source = where
    assert lines[0].startswith("Error: cannot import ") and error in lines[0], lines
    assert lines[1].startswith(f'  File "{root / path}", line {line}'), lines
    assert lines[2].strip() == source
    assert len(lines) == 3  # no traceback through aioqueue, importlib or json
    assert "Traceback" not in result.stderr


def test_a_missing_app_module_names_what_was_tried_and_where(
    project: tuple[Path, Invoke]
) -> None:
    root, invoke = project
    result = invoke("-A", "nosuchproj.app", "worker")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot import module 'nosuchproj': no module named 'nosuchproj' (looked in "
        f"{root} and the rest of sys.path; is the project on your PYTHONPATH, or run aioqueue "
        "from the directory that holds it?)"]


# -- call --------------------------------------------------------------------------------------
def test_call_checks_the_task_name_with_did_you_mean(project: tuple[Path, Invoke]) -> None:
    root, invoke = project
    write(root, {"callproj.py": app_module("q-call")})
    typo = invoke("-A", "callproj", "call", "callproj.ad", "-a", "[1, 2]")
    assert typo.exit_code == 2
    assert typo.stderr.strip() == ("Error: task 'callproj.ad' is not registered in "
                                   "callproj:app; did you mean 'callproj.add'?")
    short = invoke("-A", "callproj", "call", "add")
    assert "did you mean 'callproj.add'?" in short.stderr
    unknown = invoke("-A", "callproj", "call", "zzz")
    assert "(it registers callproj.add); --no-check sends it anyway" in unknown.stderr
    sent = invoke("-A", "callproj", "call", "zzz", "--no-check")
    assert sent.exit_code == 0, sent.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-a", "{}"], "-a/--args must be a JSON array"),
        (["-a", "[1,"], "-a/--args is not valid JSON"),
        (["-k", "[1]"], "-k/--kwargs must be a JSON object"),
        (["-a", "[1, 2]", "3"], "either as ARG... or with -a/--args, not both"),
        (["--countdown", "5", "--eta", "2100-01-01T00:00:00"], "--countdown and --eta"),
        (["--eta", "next tuesday"], "is not an ISO 8601 date and time"),
    ],
)
def test_call_rejects_bad_arguments(project: tuple[Path, Invoke], args: list[str],
                                    message: str) -> None:
    root, invoke = project
    write(root, {"callproj.py": app_module("q-call")})
    result = invoke("-A", "callproj", "call", "callproj.add", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_call_with_eta_and_the_old_positional_form(project: tuple[Path, Invoke]) -> None:
    root, invoke = project
    write(root, {"callproj.py": app_module("q-call")})
    later = invoke("-A", "callproj", "call", "callproj.add", "-a", "[1, 2]", "-k", "{}",
                   "--eta", "2100-01-01T00:00:00+00:00")
    assert later.exit_code == 0, later.output
    assert re.fullmatch(r"[0-9a-f-]{36}", later.stdout.strip())
    now = invoke("call", "callproj:app", "callproj.add", "1", "2", "--queue", "other")
    assert now.exit_code == 0, now.output
    assert invoke("-A", "callproj", "status", "-Q", "q-call,other").stdout.splitlines() == [
        "q-call: ready=0 delayed=1 dead=0", "other: ready=1 delayed=0 dead=0"]


# -- version and help --------------------------------------------------------------------------
def test_version_top_level_and_as_a_command(project: tuple[Path, Invoke]) -> None:
    _, invoke = project
    from importlib.metadata import version

    for args in (["--version"], ["version"]):
        result = invoke(*args)
        assert result.exit_code == 0
        assert result.stdout.splitlines() == [
            f"aioqueue {aioqueue.__version__}",
            f"Python   {platform.python_version()} ({platform.python_implementation()})",
            f"redis-py {version('redis')}",
            f"platform {platform.platform()}",
        ]


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group, by path (Typer's click is its own: duck-typed)."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_help_is_free_of_rest_markup(project: tuple[Path, Invoke]) -> None:
    _, invoke = project
    commands = dict(_commands(typer.main.get_command(cli)))
    assert {("worker",), ("call",), ("beat",), ("status",), ("version",),
            ("dead", "list")} <= set(commands)
    for path, command in commands.items():
        result = invoke(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        text = result.stdout
        assert "``" not in text, (path, text)
        assert not re.search(r":[a-z]+:`", text), (path, text)  # :class:`...` and kin
        assert "\\b" not in text, (path, text)
        if not hasattr(command, "commands") and path != ("version",):
            assert "--app" in text and "-A" in text, (path, text)  # every app command


# -- the worker --------------------------------------------------------------------------------
def test_dash_a_proj_worker_runs_tasks_end_to_end(
    redis_url: str, processes: list[subprocess.Popen[str]]
) -> None:
    env = cli_env(redis_url)
    worker = start_cli(["-A", "proj", "worker", "-l", "info"], env)
    processes.append(worker)
    assert worker.stdout is not None and worker.stderr is not None
    out, log = Lines(worker.stdout), Lines(worker.stderr)
    log.wait_for("consuming")
    added = run_cli(["-A", "proj", "call", "proj.tasks.add", "-a", "[2, 3]", "--wait",
                     "--timeout", "20"], env)
    assert added.returncode == 0, added.stderr
    task_id, result = added.stdout.split()
    assert result == "5"
    assert task_id in log.wait_for("succeeded in")
    greeted = run_cli(["call", "-A", "proj", "proj.tasks.greet", "-k",
                       '{"name": "celery user", "punctuation": "?"}', "--wait"], env)
    assert greeted.stdout.splitlines()[-1] == '"hello celery user?"', greeted.stderr
    banner, errors = stop(worker, out, log)
    assert "app:          proj (proj.celery:app)" in banner
    assert ". proj.tasks.add" in banner  # from include=["proj.tasks"], before the start
    assert "no tasks registered" not in errors


def test_a_worker_without_tasks_warns_once(
    tmp_path: Path, redis_url: str, processes: list[subprocess.Popen[str]]
) -> None:
    (tmp_path / "bare.py").write_text(
        "import os\nfrom aioqueue import AioQueue\n"
        "app = AioQueue('bare', broker=os.environ['CLI_REDIS_URL'])\n")
    result = run_cli(["-A", "bare", "worker", "--burst"], cli_env(redis_url), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warning = ("warning: no tasks registered in bare:app; did you forget include=[...] or to "
               "import your tasks module?")
    assert result.stderr.count(warning) == 1, result.stderr
    assert "(none registered)" in result.stdout


def test_django_is_set_up_before_the_app_is_imported(redis_url: str) -> None:
    with_django = run_cli(["-A", "djsite", "call", "djsite.greeting"],
                          cli_env(redis_url, DJANGO_SETTINGS_MODULE="djsite.settings"))
    assert with_django.returncode == 0, with_django.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}", with_django.stdout.strip())
    # Without the variable the same import fails, shown at the user's line.
    without = run_cli(["-A", "djsite", "call", "djsite.greeting"], cli_env(redis_url))
    assert without.returncode == 2
    lines = without.stderr.strip().splitlines()
    assert lines[0].startswith("Error: cannot import module 'djsite.celery': django.")
    assert lines[1].startswith(f'  File "{PROJECTS / "djsite" / "celery.py"}", line ')
    assert lines[2].strip().startswith("apps.check_apps_ready()")
    assert len(lines) == 3


async def test_supervisor_replaces_children_after_max_tasks(
    redis_url: str, processes: list[subprocess.Popen[str]]
) -> None:
    env = cli_env(redis_url)
    supervisor = start_cli(["-A", "proj", "worker", "--processes", "2",
                            "--max-tasks-per-child", "2", "-c", "1", "-l", "info"], env)
    processes.append(supervisor)
    assert supervisor.stdout is not None and supervisor.stderr is not None
    out, log = Lines(supervisor.stdout), Lines(supervisor.stderr)
    log.wait_for("consuming")
    log.wait_for("consuming")
    client = AioQueue("client", broker=redis_url)
    try:
        pids = []
        for _ in range(8):  # one at a time: each child runs exactly its 2 tasks
            handle = await client.send_task("proj.tasks.whoami")
            pids.append(await handle.get(timeout=20))
    finally:
        await client.close()
    runs = Counter(pids)
    assert max(runs.values()) <= 2, runs
    assert len(runs) >= 4, runs
    log.wait_for("ran its 2 tasks (max tasks per child): replacing it")
    banner, text = stop(supervisor, out, log)
    assert "recycle:      each process after 2 tasks" in banner
    assert "restarting" not in text  # a planned replacement is no crash


def test_supervisor_replaces_a_child_over_its_memory_limit(
    redis_url: str, processes: list[subprocess.Popen[str]]
) -> None:
    # 1 MiB: every child is over it, so each is replaced at the next poll (once a second).
    supervisor = start_cli(["worker", "-A", "proj", "--max-memory-per-child", "1024",
                            "-l", "info"], cli_env(redis_url))
    processes.append(supervisor)
    assert supervisor.stdout is not None and supervisor.stderr is not None
    out, log = Lines(supervisor.stdout), Lines(supervisor.stderr)
    over = [log.wait_for("over the max memory per child of 1024 KiB: replacing it")
            for _ in range(2)]
    pids = {int(line.split("worker process ")[1].split()[0]) for line in over}
    assert len(pids) == 2
    stop(supervisor, out, log)
