"""Warm step starts for local runs: run the imports and functions cells once, fork each step.

A step run in a fresh process spends most of its start-up importing (numpy, pandas and
scikit-learn take about a second). Instead, one *warm process* per run runs the step
runtime's start-up, the ``imports`` and ``functions`` cells, once, and each step starts as
a fork of it: a copy of exactly the state a fresh process that ran those cells would be
in, which then loads its inputs, runs its cells, saves and exits.

The runner and the warm process talk over a unix socket pair (one JSON message a packet):

    warm -> runner   {"ready": ..., "failed": bool, "hazard": str|null, "seconds": float}
    runner -> warm   {"id": n, "argv": [...], "launched": time}
                     with the step's output pipe (SCM_RIGHTS)
    warm -> runner   {"forked": n, "pid": pid}  or  {"forked": n, "error": "..."}
    warm -> runner   {"exit": pid, "code": code}   (as ``Popen.returncode``: -N for signal N)

A forked step is its own process group (killed as one, like a spawned step), writes to the
pipe the runner passed it (its live output and log), and its exit status travels back
through the socket. When the runner goes away the warm process ends.

Forking is unsafe after some start-ups: a GPU context, threads the notebook's code started,
an open connection, a library known not to survive a fork. :func:`fork_hazard` names them;
with ``isolation="auto"`` the runner then starts fresh processes as before and says why.

Standard library only: the runner imports it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NoReturn, Protocol

Isolation = Literal["auto", "fork", "spawn"]
ISOLATIONS: tuple[Isolation, ...] = ("auto", "fork", "spawn")
LAUNCHED_ENV = "KALE_PY_LAUNCHED_AT"  # the same name as kale_py.runtime.LAUNCHED_ENV
_PRELUDE_ROLES = ("imports", "functions")

#: Libraries whose state does not survive a fork, with why.
UNSAFE_MODULES = {
    "tensorflow": "whose runtime threads do not survive a fork",
    "jax": "which does not support fork",
    "ray": "whose workers and connections do not survive a fork",
    "pyspark": "whose JVM gateway cannot be shared between processes",
    "grpc": "whose channels do not survive a fork",
}
#: Shared libraries whose worker pools are known to be fork-safe (BLAS and OpenMP).
KNOWN_POOLS = ("openblas", "libgomp", "libiomp", "libomp", "mkl_rt", "libmkl", "blis")
_GPU_DEVICES = ("/dev/nvidia", "/dev/kfd", "/dev/dri/")
_SEEDING = re.compile(r"\b(seed|set_state|setstate|manual_seed)\s*\(")


class StepProcess(Protocol):
    """What the scheduler needs of a step process: a ``subprocess.Popen`` or a fork."""

    @property
    def pid(self) -> int: ...

    @property
    def stdout(self) -> IO[bytes] | None: ...

    @property
    def returncode(self) -> int | Any: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


# --- the runner's side --------------------------------------------------------------------


class ForkedStep:
    """A step forked by the warm process, waited for like a ``subprocess.Popen``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdout: IO[bytes] | None = None
        self.returncode: int | None = None
        self._done = threading.Event()

    def exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"step process {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


@dataclass
class Ready:
    """What the warm process said once the imports and functions cells had run."""

    failed: bool  # a cell failed: each forked step reports it, as a fresh process would
    hazard: str | None  # why forking is unsafe, or None
    seconds: float  # spent in the imports and functions cells
    output: bytes  # what they printed


class WarmProcess:
    """The runner's handle on one warm process: ask it for forks, hear their exits."""

    def __init__(
        self, python: str, runtime_args: Sequence[str], cwd: Path, env: Mapping[str, str]
    ) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [python, "-m", "kale_py.warm", str(theirs.fileno()), *runtime_args],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.steps: dict[int, ForkedStep] = {}
        self.replies: queue.Queue[ForkedStep | str] = queue.Queue()
        self.ready: Ready | None = None
        self._ready = threading.Event()
        self._output = bytearray()
        self._next_id = 0
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        threading.Thread(target=self._dispatch, daemon=True, name="kale_py-warm").start()

    def wait_ready(self, interrupted: Callable[[], bool]) -> Ready | None:
        """Wait for the imports and functions cells; ``None`` if interrupted."""
        while not self._ready.wait(0.05):
            if interrupted():
                return None
        self._reader.join(timeout=2.0)  # the warm process closed its output once ready
        if self.ready is not None:
            self.ready.output = bytes(self._output)
            return self.ready
        code = self.proc.wait()
        return Ready(
            False,
            f"the warm start process ended with code {code} before its imports were done",
            0.0,
            bytes(self._output),
        )

    def fork(self, argv: Sequence[str]) -> ForkedStep:
        """A new step process running ``python -m kale_py.runtime argv``; OSError if not."""
        read_end, write_end = os.pipe()
        self._next_id += 1
        request = {"id": self._next_id, "argv": list(argv), "launched": time.time()}
        try:
            socket.send_fds(self.sock, [json.dumps(request).encode()], [write_end])
        except OSError:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        try:
            reply = self.replies.get(timeout=60.0)
        except queue.Empty:
            reply = "the warm start process did not answer within 60 s"
        if isinstance(reply, str):
            os.close(read_end)
            raise OSError(reply)
        reply.stdout = os.fdopen(read_end, "rb")
        return reply

    def close(self) -> None:
        """End the warm process (the steps it forked are not touched)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.sock.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def _read_output(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
                self._output += chunk

    def _dispatch(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self._message(json.loads(data))
        except (OSError, ValueError):
            pass
        # The warm process is gone: nobody can report the exits of its steps any more.
        self._ready.set()
        self.replies.put("the warm start process has ended")
        for step in list(self.steps.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(step.pid, signal.SIGKILL)
            step.exited(-signal.SIGKILL)

    def _message(self, message: dict[str, Any]) -> None:
        if "ready" in message:
            self.ready = Ready(
                bool(message["failed"]), message["hazard"], float(message["seconds"]), b""
            )
            self._ready.set()
        elif "forked" in message:
            if "pid" not in message:
                self.replies.put(str(message.get("error") or "the fork failed"))
                return
            step = ForkedStep(int(message["pid"]))
            self.steps[step.pid] = step
            self.replies.put(step)
        elif "exit" in message:
            done = self.steps.pop(int(message["exit"]), None)
            if done is not None:
                done.exited(int(message["code"]))


@dataclass(frozen=True)
class StepStart:
    """What a step needs to be started: its runtime arguments, and what its prelude sees."""

    argv: tuple[str, ...]  # for ``python -m kale_py.runtime``
    program: Path
    spec: Path
    workdir: Path
    prelude_params: tuple[tuple[str, str], ...]  # --param values the prelude's code names


@dataclass
class StepStarter:
    """Starts step processes: forks of a warm process, or fresh ones.

    One warm process per distinct prelude (the cells are the same for every step; the
    parameters the prelude's code names, bound before it runs, may differ).
    """

    isolation: Isolation
    python: str
    runtime: tuple[str, ...] | None  # a custom step command: fresh processes only
    cwd: Path
    env: Mapping[str, str]
    notes: list[str] = field(default_factory=list)
    prelude_seconds: float | None = None
    _warm: dict[tuple[tuple[str, str], ...], WarmProcess | None] = field(default_factory=dict)
    _shown: bool = False

    def start(
        self, step: StepStart, interrupted: Callable[[], bool]
    ) -> tuple[StepProcess, bytes] | None:
        """The step's process and the prelude output to put first in its log (b"" when
        the process runs the prelude itself); ``None`` if interrupted meanwhile."""
        warm = self._warm_process(step, interrupted)
        if warm is _INTERRUPTED:
            return None
        if isinstance(warm, WarmProcess):
            assert warm.ready is not None
            return warm.fork(step.argv), warm.ready.output
        return self._spawn(step), b""

    @property
    def prelude_failed(self) -> bool:
        """An imports or functions cell failed in a warm process: every step forked from
        it would fail the same way."""
        return any(w is not None and w.ready is not None and w.ready.failed
                   for w in self._warm.values())  # fmt: skip

    def show_prelude_output(self) -> bool:
        """True once: the console shows the prelude's output for the first forked step."""
        shown, self._shown = self._shown, True
        return not shown

    def close(self) -> None:
        for warm in self._warm.values():
            if warm is not None:
                warm.close()
        self._warm.clear()

    def _spawn(self, step: StepStart) -> subprocess.Popen[bytes]:
        command = [*(self.runtime or (self.python, "-m", "kale_py.runtime")), *step.argv]
        return subprocess.Popen(
            command,
            cwd=self.cwd,
            env={**self.env, LAUNCHED_ENV: repr(time.time())},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _warm_process(self, step: StepStart, interrupted: Callable[[], bool]) -> object:
        if self.isolation == "spawn" or self.runtime is not None:
            return None
        key = step.prelude_params
        if key in self._warm:
            return self._warm[key]
        args = ["--program", str(step.program), "--spec", str(step.spec)]
        args += ["--workdir", str(step.workdir)]
        for name, value in key:
            args += ["--param", f"{name}={value}"]
        try:
            warm = WarmProcess(self.python, args, self.cwd, self.env)
        except OSError as exc:
            self._fall_back(key, f"the warm start process cannot start ({exc})")
            return None
        ready = warm.wait_ready(interrupted)
        if ready is None:
            warm.close()
            return _INTERRUPTED
        self._warm[key] = warm
        if ready.hazard is not None and not ready.failed:
            if self.isolation == "auto":
                warm.close()
                self._fall_back(key, ready.hazard)
                return None
            self.notes.append(f"steps forked although {ready.hazard} (--isolation fork)")
        self.prelude_seconds = (self.prelude_seconds or 0.0) + ready.seconds
        return warm

    def _fall_back(self, key: tuple[tuple[str, str], ...], reason: str) -> None:
        self._warm[key] = None
        note = f"steps ran in fresh processes, not forked: {reason}"
        if note not in self.notes:
            self.notes.append(note)


_INTERRUPTED = object()


def prelude_params(
    program: str, cells: Sequence[Mapping[str, Any]], params: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """The ``params`` (name -> --param text) whose names the prelude cells' code mentions:
    they are bound before the prelude runs, so steps that differ in them cannot share it."""
    text = prelude_source(program, cells)
    return tuple(
        (name, value)
        for name, value in sorted(params.items())
        if re.search(rf"\b{re.escape(name)}\b", text)
    )


def prelude_source(program: str, cells: Sequence[Mapping[str, Any]]) -> str:
    lines = program.splitlines(keepends=True)
    return "".join(
        "".join(lines[cell["start"] - 1 : cell["end"]])
        for cell in cells
        if cell["role"] in _PRELUDE_ROLES
    )


# --- the warm process's side ----------------------------------------------------------------


def fork_hazard(control_fd: int) -> str | None:
    """Why forking this process now could break the copies, or None if it is safe."""
    for module, why in UNSAFE_MODULES.items():
        if module in sys.modules:
            return f"the imports loaded {module}, {why}"
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    with contextlib.suppress(Exception):
        if cuda is not None and cuda.is_initialized():
            return "the imports initialised CUDA (torch.cuda), a GPU context forks cannot share"
    return _open_file_hazard(control_fd) or _thread_hazard()


def _open_file_hazard(control_fd: int) -> str | None:
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc/self/fd"):
            if int(entry) == control_fd:
                continue
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{entry}")
                if target.startswith(_GPU_DEVICES):
                    return f"the imports opened the GPU device {target}"
                if target.startswith("socket:"):
                    return "the imports left a socket open (a network or database connection)"
    return None


def _thread_hazard() -> str | None:
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return (
            f"the imports and functions cells left {len(others)} thread(s) running "
            f"({', '.join(others)})"
        )
    try:
        native = len(os.listdir("/proc/self/task")) - 1
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    pools = {lib for lib in KNOWN_POOLS if lib in maps}
    allowed = len(pools) * (os.cpu_count() or 1)
    if native > allowed:
        return (
            f"{native} native threads are running besides the main one, more than the "
            "BLAS and OpenMP pools start"
        )
    return None


def _send(sock: socket.socket, message: Mapping[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def _quiet_stdio() -> None:
    """Close the warm process's output (the runner reads it until EOF): from now on only
    its forks write, each to its own pipe."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)


def serve(control_fd: int, runtime_argv: list[str]) -> int:
    """The warm process: run the prelude, then fork a step per request until the runner
    closes the socket. Returns in the warm process at the end, never in a fork."""
    from kale_py import runtime

    sock = socket.socket(fileno=control_fd)
    started = time.perf_counter()
    step = runtime.begin(runtime._arguments(runtime_argv))
    seconds = time.perf_counter() - started
    hazard = None if step.failed is not None else fork_hazard(control_fd)
    prelude = prelude_source(step.runtime.program, step.spec["cells"])
    rng = _RandomState.capture(prelude)
    _quiet_stdio()
    # Objects made so far are never traversed by the forks' garbage collector: their
    # pages stay shared (a collection would touch every object, copying its page).
    gc.freeze()
    _send(sock, {"ready": True, "failed": step.failed is not None, "hazard": hazard,
                 "seconds": seconds})  # fmt: skip
    request = _serve(sock)
    if request is None:
        return 0
    _run_fork(step, request, rng)  # never returns


def _serve(sock: socket.socket) -> tuple[dict[str, Any], int] | None:
    """Fork a step per request; report exits. In a fork, returns its request and pipe."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, None)
    while True:
        for key, _ in selector.select():
            if key.data is not None:
                _reap(sock, selector, key.fd, key.data)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                return None
            request = json.loads(data)
            forked = _fork(sock, selector, request, fds[0])
            if forked is not None:
                return forked


def _fork(
    sock: socket.socket, selector: selectors.BaseSelector, request: dict[str, Any], pipe: int
) -> tuple[dict[str, Any], int] | None:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(pipe)
        _send(sock, {"forked": request["id"], "error": f"fork failed: {exc}"})
        return None
    if pid == 0:
        try:
            os.setpgid(0, 0)
            for key in list(selector.get_map().values()):
                if key.data is not None:
                    os.close(key.fd)
            selector.close()
            sock.close()
        except BaseException:  # noqa: BLE001 - a fork must never return to the loop
            os._exit(70)
        return request, pipe
    os.close(pipe)
    # Also here: the runner may signal the group before the fork has made it.
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    selector.register(os.pidfd_open(pid), selectors.EVENT_READ, pid)
    _send(sock, {"forked": request["id"], "pid": pid})
    return None


def _reap(sock: socket.socket, selector: selectors.BaseSelector, pidfd: int, pid: int) -> None:
    selector.unregister(pidfd)
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


@dataclass(frozen=True)
class _RandomState:
    """The random generators after the prelude: what each fork must change in them."""

    seeded: bool  # the prelude seeded the global generators: forks continue that stream
    python: object = None
    numpy: object = None
    #: The prelude made generator objects from OS entropy only (``default_rng()``): each
    #: fork draws new entropy for them, as each fresh process would.
    fresh_objects: bool = False

    @classmethod
    def capture(cls, prelude: str) -> _RandomState:
        import random

        fresh = bool(_UNSEEDED_MAKER.search(prelude)) and not _SEEDED_MAKER.search(prelude)
        if not _SEEDING.search(prelude):
            return cls(False, fresh_objects=fresh)
        numpy_random = sys.modules.get("numpy.random")
        numpy_state = numpy_random.get_state() if numpy_random is not None else None
        return cls(True, random.getstate(), numpy_state, fresh)

    def apply(self, namespace: Mapping[str, Any]) -> None:
        """In a fork: the state a fresh process would have. Unseeded generators are seeded
        from the OS (no two steps share a stream); seeded ones continue where the prelude
        left them (Python reseeds ``random`` at each fork: that is undone)."""
        import random

        numpy_random = sys.modules.get("numpy.random")
        if not self.seeded:
            random.seed()
            if numpy_random is not None:
                numpy_random.seed()
        else:
            random.setstate(self.python)  # type: ignore[arg-type]
            if numpy_random is not None and self.numpy is not None:
                numpy_random.set_state(self.numpy)
        if self.fresh_objects:
            for value in list(namespace.values()):
                _reseed_object(value, numpy_random)


_UNSEEDED_MAKER = re.compile(r"\b(default_rng|RandomState|Random|Generator)\(\s*\)")
_SEEDED_MAKER = re.compile(r"\b(default_rng|RandomState|Random)\(\s*[^)\s]")


def _reseed_object(value: Any, numpy_random: Any) -> None:
    import random

    kinds: tuple[type, ...] = (random.Random,)
    if numpy_random is not None:
        kinds += (numpy_random.RandomState,)
    if isinstance(value, kinds):
        getattr(value, "seed")()  # noqa: B009 - a Random or a RandomState
    elif numpy_random is not None and isinstance(value, numpy_random.Generator):
        value.bit_generator.state = type(value.bit_generator)().state


def _run_fork(step: Any, request: tuple[dict[str, Any], int], rng: _RandomState) -> NoReturn:
    """In a fork: become the requested step, run it, exit with its code."""
    from kale_py import runtime

    message, pipe = request
    code = 70
    try:
        os.dup2(pipe, 1)
        os.dup2(pipe, 2)
        os.close(pipe)
        argv = list(message["argv"])
        os.environ[LAUNCHED_ENV] = repr(float(message["launched"]))
        sys.argv = [runtime.__file__, *argv]
        args = runtime._arguments(argv)
        _become(step, args, rng)
        code = runtime.finish(step)
    except SystemExit as exc:  # the step's code called sys.exit(): as a fresh process
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - reported in the step's log, like an uncaught error
        import traceback

        traceback.print_exc()
        code = 1
    _exit(code)


def _become(step: Any, args: Any, rng: _RandomState) -> None:
    """Turn the prelude's state into the state of the step ``args`` names."""
    from kale_py import runtime

    spec = json.loads(runtime._read_payload(args.spec, ".json"))
    program = runtime._read_payload(args.program, ".py")
    step.args, step.spec = args, spec
    step.result["step"] = spec["step"]
    step.runtime.args, step.runtime.spec, step.runtime.program = args, spec, program
    given = runtime._pairs(args.param, "--param")
    # The parameters the prelude names were bound before it ran, with the same values.
    bound = {name for name, _ in prelude_params(program, spec["cells"], given)}
    step.runtime.set_parameters(skip=frozenset(bound))
    rng.apply(step.runtime.namespace)
    step.started = time.perf_counter()


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _exit(code: int) -> NoReturn:
    """End a fork as an interpreter ends: wait for its threads, run the exit handlers,
    flush; without tearing down the modules the warm process imported."""
    import atexit

    with contextlib.suppress(BaseException):
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or not args[0].isdigit():
        raise SystemExit("usage: python -m kale_py.warm CONTROL_FD RUNTIME_ARGS...")
    return serve(int(args[0]), args[1:])


if __name__ == "__main__":
    sys.exit(main())
