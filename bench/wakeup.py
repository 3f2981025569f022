"""How long a request's processes wait for a core while background work keeps every core busy,
with the background work placed three ways (config.priority):

- `alone`: no background work (the baseline);
- `niced`: at nice REFINERY_BACKGROUND_NICE, each in a session of its own whose scheduling group
  (autogroup) has that nice value too: what a niced export child or worker gets everywhere;
- `idle cgroup`: the same, moved into the idle cgroup BACKGROUND_CGROUP, where the machine lets
  this process make one (otherwise the mode is skipped, and says why).

A "request" is a client process and a server process at nice 0 passing a byte back and forth
`--round-trips` times, the server working `--work-us` on each (as gunicorn and a PostgreSQL
backend do over a request's statements), then the client sleeping `--pause-ms` (the next rater's
request arriving on an idle thread). While it runs, `--hogs` processes (one more than the cores by
default) spin on the CPU with the placement of the mode. The modes take turns, `--rounds` times,
so that a drift in the machine's speed falls on all of them. For each mode the bench prints the
request's latency percentiles, the p99 against `alone` run in the same process, and the cores the
background work still got (it should go on where the request leaves cores idle).

    python bench/wakeup.py [--seconds 4] [--rounds 3] [--hogs N] [--round-trips 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder would come first on sys.path, and bench/queue.py would shadow
# the standard library's queue (which Celery, loaded with the config package, imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.queue import percentile  # noqa: E402
from config.priority import background_cgroup, enter_cgroup, lower_autogroup  # noqa: E402

MODES = ("alone", "niced", "idle cgroup")


def _spin() -> None:
    x = 0
    while True:
        x += 1


def start_hogs(n: int, *, nice: int, group: Path | None) -> list[int]:
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                os.nice(nice)
                lower_autogroup(nice)
                if group is not None and not enter_cgroup(group):
                    os._exit(3)
                _spin()
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        os.waitpid(pid, 0)


def start_server(work_us: float) -> tuple[int, int, int]:
    """A process at this process's priority answering each byte on its pipe after `work_us`."""
    to_server, from_client = os.pipe()
    to_client, from_server = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(from_client)
            os.close(to_client)
            while os.read(to_server, 1):
                until = time.perf_counter() + work_us / 1e6
                while time.perf_counter() < until:
                    pass
                os.write(from_server, b".")
        finally:
            os._exit(0)
    os.close(to_server)
    os.close(from_server)
    return pid, from_client, to_client


def requests_for(
    seconds: float, *, round_trips: int, pause_ms: float, send: int, receive: int
) -> list[float]:
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(pause_ms / 1000)
        started = time.perf_counter()
        for _ in range(round_trips):
            os.write(send, b".")
            os.read(receive, 1)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=(os.cpu_count() or 1) + 1)
    parser.add_argument("--round-trips", type=int, default=10)
    parser.add_argument("--work-us", type=float, default=100.0)
    parser.add_argument("--pause-ms", type=float, default=2.0)
    parser.add_argument("--nice", type=int, default=int(os.environ.get("REFINERY_BACKGROUND_NICE", 10)))
    parser.add_argument("--cgroup", default=os.environ.get("BACKGROUND_CGROUP", "refinery-background"))
    args = parser.parse_args(argv)

    group = background_cgroup(args.cgroup)
    modes = [m for m in MODES if m != "idle cgroup" or group is not None]
    server, send, receive = start_server(args.work_us)
    latencies: dict[str, list[float]] = {m: [] for m in modes}
    hog_cores: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for round_number in range(1, args.rounds + 1):
            for mode in modes:
                hogs = (
                    []
                    if mode == "alone"
                    else start_hogs(args.hogs, nice=args.nice, group=group if mode == "idle cgroup" else None)
                )
                time.sleep(0.3)  # the hogs settle
                before = sum(cpu_seconds(pid) for pid in hogs)
                started = time.monotonic()
                found = requests_for(
                    args.seconds,
                    round_trips=args.round_trips,
                    pause_ms=args.pause_ms,
                    send=send,
                    receive=receive,
                )
                hog_cores[mode].append(
                    (sum(cpu_seconds(pid) for pid in hogs) - before) / (time.monotonic() - started)
                )
                stop(hogs)
                latencies[mode] += found
                print(
                    f"[round {round_number}/{args.rounds}] {mode:12s} {len(found):6d} requests, "
                    f"p99 {percentile(found, 99):6.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        os.close(send)
        os.waitpid(server, 0)
        os.close(receive)

    print(
        f"\nRefinery wake-up bench: {os.cpu_count()} CPUs, {args.hogs} background hogs at nice {args.nice}, "
        f"requests of {args.round_trips} round trips ({args.work_us:g} µs of work each) every "
        f"{args.pause_ms:g} ms, {args.rounds} × {args.seconds:g} s per mode"
    )
    if group is None:
        print(f"  (no idle cgroup: this process cannot make or use {args.cgroup!r} here)")
    base = percentile(latencies["alone"], 99)
    print(
        f"\n{'':14s}{'requests':>9s}{'p50 ms':>9s}{'p95 ms':>9s}{'p99 ms':>9s}{'max ms':>9s}{'p99 ratio':>11s}{'bg cores':>10s}"
    )
    for mode in modes:
        values = latencies[mode]
        p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
        cores = sum(hog_cores[mode]) / len(hog_cores[mode])
        print(
            f"{mode:14s}{len(values):9d}{p50:9.2f}{p95:9.2f}{p99:9.2f}{max(values):9.2f}{p99 / base:11.2f}{cores:10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
