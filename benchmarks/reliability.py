"""Reliability under SIGKILL: ``python -m benchmarks.reliability [--libs aioqueue,arq]``.

Starts its own redis-server; per library and round two workers of the library's own CLI,
one of them SIGKILLed (and respawned) every second while a producer sends tasks; reports
tasks lost, tasks run twice and the time until a killed worker's tasks ran elsewhere.
Method: benchmarks/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

import uvloop

from benchmarks import _readme
from benchmarks import _reliability as rel
from benchmarks._measure import kill_all_workers
from benchmarks._redis import RedisServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__)
    p.add_argument("--libs", default=",".join(rel.DEFAULT_LIBS),
                   help=f"comma list out of: {', '.join(rel.LIBRARIES)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load and kills")
    p.add_argument("--kill-every", type=float, default=1.0, help="seconds between kills")
    p.add_argument("--bound", type=float, default=60.0,
                   help="after the last kill, wait at most this long for all tasks")
    p.add_argument("--rate", type=float, default=200.0,
                   help="tasks/s sent (capped per library at its MAX_RATE)")
    p.add_argument("--out", default="", help="directory for reliability.json/.md")
    a = p.parse_args(argv)
    a.libs = [x.strip() for x in a.libs.split(",") if x.strip()]
    unknown = [x for x in a.libs if x not in rel.LIBRARIES]
    if unknown:
        p.error(f"unknown libraries: {', '.join(unknown)}")
    return a


def _on_signal(signum: int, frame: FrameType | None) -> NoReturn:
    kill_all_workers()
    raise SystemExit(128 + signum)


def _print_progress(rnd: int, lib: str, r: rel.RoundResult) -> None:
    state = f"error: {r.error}" if r.error else (
        f"sent {r.sent}, lost {r.lost}, run twice {r.run_twice}, "
        f"in flight at kills {r.in_flight_at_kill}")
    print(f"round {rnd} {lib}: {state}", flush=True)


async def main(a: argparse.Namespace) -> dict[str, object]:
    logdir = Path(tempfile.mkdtemp(prefix="aioqueue-reliability-"))
    print(f"worker logs: {logdir}", flush=True)
    rounds = []
    t0 = time.monotonic()
    with RedisServer() as server:
        for n in range(a.rounds):
            # Rotate the order each round so no library always runs first.
            k = n % len(a.libs)
            order = a.libs[k:] + a.libs[:k]
            rounds.append(await rel.run_round(
                server, order, logdir / f"round{n + 1}", a.duration, a.kill_every, a.bound,
                a.rate, progress=functools.partial(_print_progress, n + 1)))
    doc = rel.summarize(rounds, a.libs)
    doc["config"] = {"rounds": a.rounds, "duration": a.duration, "kill_every": a.kill_every,
                     "bound": a.bound, "rate": a.rate, "wall_s": round(time.monotonic() - t0),
                     "command": "python -m benchmarks.reliability " + " ".join(sys.argv[1:]),
                     "logdir": str(logdir)}
    return doc


def run(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        doc = uvloop.run(main(a))
    finally:
        kill_all_workers()
    md = rel.markdown(doc)
    print(md)
    print(f"wall time: {doc['config']['wall_s']} s")  # type: ignore[index]
    out = Path(a.out) if a.out else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "reliability.md").write_text(f"`{doc['config']['command']}`\n\n" + md)  # type: ignore[index]
    if not a.out and a.rounds >= 3 and "aioqueue" in a.libs and len(a.libs) > 1:
        # What `make bench` makes: the README's reliability table too (benchmarks/_readme.py).
        table = md.split("\n\n- **")[0]  # the table, without each library's notes
        if _readme.replace_section("reliability", table):
            print(f"wrote {_readme.README}")


if __name__ == "__main__":
    run()
