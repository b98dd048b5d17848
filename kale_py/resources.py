"""A local step's memory and CPU, measured and limited as the cluster would.

- :func:`reap` waits for a step process with ``os.wait4``: its exit code, CPU seconds and
  peak resident memory (``ru_maxrss``). It works alike for spawned and forked step
  processes. Linux counts in ``ru_maxrss`` the parent's memory at the fork that preceded the
  exec, so the runner prefers the peak the step reports for itself (``VmHWM``, in its
  result) and falls back on ``ru_maxrss`` when the step died without a result.
- :class:`MemoryWatch` polls a running step's resident size against its ``limit:memory``
  and kills the step's process group once it is over; the step's own peak catches what a
  poll misses. Either way the step fails as the cluster's OOM killer would fail it.
- :func:`suggestions` turns measured peaks into ``request:``/``limit:`` tags.
- :func:`die_with_parent` (called by the step runtime) makes the kernel kill a step
  process when the runner that started it dies, even by ``kill -9``.

Standard library only.
"""

from __future__ import annotations

import math
import os
import re
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

#: Set by the runner for its step processes: the runner's pid.
PARENT_ENV = "KALE_PY_RUNNER_PID"

_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kMGTPE]i?|)[Bb]?\s*$")


def parse_bytes(text: str) -> int:
    """A byte quantity as Kubernetes writes it (``200Mi``, ``1.5G``, ``300M``); ValueError."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (write it like 300M, 20G or 512Mi)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(count: float) -> str:
    """``1.0 GiB``, ``45.2 MiB``, ``812 KiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}" if unit != "KiB" else f"{count / size:.0f} {unit}"
    return f"{int(count)} B"


@dataclass(frozen=True)
class Usage:
    """What a finished step process used."""

    peak_rss_bytes: int
    cpu_seconds: float


def reap(pid: int) -> tuple[int, Usage | None]:
    """Wait for ``pid``; its exit code as subprocess reports it (``-N`` for signal N) and
    its usage (None when someone else reaped it first)."""
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        return -1, None
    code = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return code, Usage(usage.ru_maxrss * scale, round(usage.ru_utime + usage.ru_stime, 3))


def exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (so :func:`reap` still gets its usage)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def resident_bytes(pid: int) -> int:
    """The current resident size of a process, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryWatch:
    """A step's memory limit: ``over()`` says when its resident size passed it."""

    def __init__(self, limit_text: str) -> None:
        self.limit_text = limit_text
        self.limit = parse_bytes(limit_text)
        self.seen = 0

    def over(self, pid: int) -> bool:
        self.seen = max(self.seen, resident_bytes(pid))
        return self.seen > self.limit

    def message(self, step: str, peak: int) -> str:
        return (f"step {step} used {format_bytes(max(peak, self.seen))}, over its limit "
                f"{self.limit_text}: on the cluster it would be OOM-killed")


def memory_limit(limits: Mapping[str, str]) -> MemoryWatch | None:
    text = dict(limits).get("memory")
    if not text:
        return None
    try:
        return MemoryWatch(text)
    except ValueError:
        return None


def suggestions(peaks: Mapping[str, int]) -> Iterator[tuple[str, str, str]]:
    """For each step: (step, request tag, limit tag) from its measured peak memory.

    The request is the peak rounded up to 16 MiB with a quarter on top; the limit is
    twice the request (room for bigger inputs before the OOM killer steps in).
    """
    for step, peak in peaks.items():
        mib = max(64, math.ceil(peak * 1.25 / 2**20 / 16) * 16)
        yield step, f"request:memory:{mib}Mi", f"limit:memory:{mib * 2}Mi"


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the runner named in the environment dies
    (Linux; elsewhere nothing happens)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the runner died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


#: The guardian: a small process of its own session that outlives the runner. It reads
#: "+ PGID" / "- PGID" lines; at end of input (the runner exited or was killed, even by
#: SIGKILL) it kills every process group still listed: the step processes and whatever
#: they started.
_GUARDIAN = "\n".join([
    "import os, signal, sys",
    "groups = set()",
    "for line in sys.stdin:",
    "    op, _, pgid = line.strip().partition(' ')",
    "    if pgid.isdigit():",
    "        (groups.add if op == '+' else groups.discard)(int(pgid))",
    "for pgid in groups:",
    "    try:",
    "        os.killpg(pgid, signal.SIGKILL)",
    "    except OSError:",
    "        pass",
])


class Guardian:
    """Step process groups die with the runner, however the runner ends."""

    def __init__(self) -> None:
        import subprocess
        import sys

        self._process: subprocess.Popen[bytes] | None = None
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-S", "-c", _GUARDIAN],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # no terminal signal (Ctrl-C, hang-up) reaches it
                close_fds=True,
            )
        except OSError:
            self._process = None  # runs go on; steps still die with the runner (prctl)

    def watch(self, pgid: int) -> None:
        self._send(f"+ {pgid}\n")

    def release(self, pgid: int) -> None:
        """The group is gone (killed by the runner): its id may be reused, forget it."""
        self._send(f"- {pgid}\n")

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.close()
            process.wait(timeout=5)
        except (OSError, ValueError):
            pass
        except Exception:  # subprocess.TimeoutExpired: it ends on its own
            pass

    def _send(self, line: str) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.write(line.encode())
            process.stdin.flush()
        except (OSError, ValueError):
            self._process = None
