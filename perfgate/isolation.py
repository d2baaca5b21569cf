"""``--perf-isolate``: each case runs in a child process, so a crash or a hang costs only that case.

The child is a pytest process of its own (``python -m pytest ... --perf-serve R,W``) started
with this run's rootdir, ini file, conftests, plugins and perfgate options, so it builds the
same matrix and sees the same registrations; it collects but runs no test, and serves cases
instead: the parent's :class:`IsolatedCaseRun` sends each step (build, check_accuracy, time,
check_regression) over a pipe, the child runs it with the ordinary :class:`~perfgate.execution.CaseRun`
and answers with the step's outcome and the case's result. One child serves case after case, so
the interpreter, the imports and the loaded models are paid for once; a child that dies is
replaced for the next case. The artifact cache is shared on disk, so a model is trained once.

What the parent makes of a child that stops answering:

- the pipe closes (a segfault, ``os._exit``, the OOM killer): the case is ``crashed``, with the
  signal or exit status, the step it was in, and the tail of the child's log (where Python's
  faulthandler writes the stack of a fatal error) in the report;
- no answer by the case's time limit plus a grace: the child is killed and the case fails with
  "timed out after N s in <step>" (a hang in native code, which the child's own alarm cannot stop).

The child's stdout and stderr go to ``<cache>/runs/<run id>-worker<N>.log``, never into the
pipe, so a model that prints cannot break the protocol.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from perfgate.guard import HANG_GRACE_S, CaseError
from perfgate.results import CaseResult

READY_TIMEOUT_S = 600.0  # a child's start: the interpreter, pytest, the plugins and collection
STEPS = ("build", "check_accuracy", "time", "check_regression")


class WorkerGone(Exception):
    """The child died or was killed while it had a step to run."""

    def __init__(self, message: str, details: str | None) -> None:
        super().__init__(message)
        self.details = details


class CaseWorker:
    """The parent's handle on its child: started on first use, replaced after a crash."""

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str], log_folder: Path, run_id: str
    ) -> None:
        self.args = args
        self.cwd = cwd
        self.env = env
        self.log_folder = log_folder
        self.run_id = run_id
        self.started = 0  # children started so far
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._send: Any = None
        self._recv: int | None = None
        self._buffer = b""

    def _spawn(self) -> None:
        self.started += 1
        self.log_folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_folder / f"{self.run_id}-worker{self.started}.log"
        command_r, command_w = os.pipe()
        reply_r, reply_w = os.pipe()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest", *self.args, f"--perf-serve={command_r},{reply_w}"],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(command_r, reply_w),
                start_new_session=True,  # a kill reaches the child's own children too
            )
        os.close(command_r)
        os.close(reply_w)
        self._send = os.fdopen(command_w, "w", encoding="utf-8")
        self._recv = reply_r
        self._buffer = b""
        ready = self._read(time.monotonic() + READY_TIMEOUT_S, lambda event: None, "start")
        if ready.get("event") != "ready":
            raise WorkerGone(f"the isolation child did not start: {ready}", self._log_tail())

    def call(
        self, request: dict[str, Any], deadline: float, on_step: Callable[[str], None]
    ) -> dict[str, Any]:
        """Send one step and wait for its answer until ``deadline`` (``time.monotonic()``).

        :param on_step: called with each sub-step the child enters (building, timing, ...).
        :raises WorkerGone: the child crashed or was killed at the deadline; the message says which.
        """
        if self.proc is None or self.proc.poll() is not None:
            self._spawn()
        try:
            self._send.write(json.dumps(request) + "\n")
            self._send.flush()
        except (BrokenPipeError, OSError):
            pass  # the read below finds the child gone and says how
        return self._read(deadline, on_step, request.get("step", "?"))

    def _read(self, deadline: float, on_step: Callable[[str], None], step: str) -> dict[str, Any]:
        assert self._recv is not None
        current = step
        with selectors.DefaultSelector() as selector:
            selector.register(self._recv, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buffer:
                    line, _, self._buffer = self._buffer.partition(b"\n")
                    message = json.loads(line)
                    if message.get("event") == "step":
                        current = message["step"]
                        on_step(current)
                        continue
                    return message
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(timeout=left):
                    self.kill()
                    raise WorkerGone(
                        f"timed out in {current}; the isolation child was killed", self._log_tail()
                    )
                chunk = os.read(self._recv, 1 << 16)
                if not chunk:
                    raise WorkerGone(f"crashed: {self._death()} in {current}", self._log_tail())
                self._buffer += chunk

    def _death(self) -> str:
        """How the child ended: its signal or exit status."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return "the child closed its pipe and did not exit"
        finally:
            self._close_pipes()
        if code < 0:
            name = _signal_name(-code)
            oom = (
                " (killed from outside: often the kernel's out-of-memory killer)"
                if -code == signal.SIGKILL
                else ""
            )
            return f"signal {-code} ({name}){oom}"
        return f"the child process exited with status {code}"

    def _log_tail(self, lines: int = 60) -> str | None:
        if self.log_path is None or not self.log_path.exists():
            return None
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return f"last lines of {self.log_path}:\n" + "\n".join(text[-lines:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self._send is not None:
            with contextlib.suppress(OSError):
                self._send.close()
            self._send = None
        if self._recv is not None:
            with contextlib.suppress(OSError):
                os.close(self._recv)
            self._recv = None

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not within 30 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._send.write(json.dumps({"op": "exit"}) + "\n")
                self._send.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()
        self.proc = None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


class IsolatedCaseRun:
    """The parent's side of one case: the same verbs as ``CaseRun``, each run in the child."""

    def __init__(
        self,
        case: Any,
        worker: CaseWorker,
        nodeid: str,
        runner: str,
        compare: bool,
        require_baseline: bool,
        on_step: Callable[[str], None],
        repeats: int = 1,
        earlier: CaseResult | None = None,
    ) -> None:
        self.case = case
        self.repeats = repeats
        self.earlier = earlier
        self.worker = worker
        self.nodeid = nodeid
        self.compare = compare
        self.require_baseline = require_baseline
        self.on_step = on_step
        self.result = CaseResult.for_case(case, runner, nodeid)
        self.timeout_s = getattr(case.timing, "case_timeout_s", None)
        self._deadline: float | None = None
        self._benchmark: Any = None
        self._open = False

    def build(self) -> None:
        self._call("build")

    def check_accuracy(self) -> None:
        self._call("check_accuracy")

    def time(self, benchmark: Any) -> None:
        from perfgate.execution import show_in_benchmark

        self._benchmark = benchmark
        benchmark.group = self.case.model.name
        if self.earlier is not None and self.earlier.pending:  # each session a row of its own, as in-process
            label = f" [{self.earlier.pending}, session {len(self.earlier.sessions) + 1}]"
            benchmark.name, benchmark.fullname = benchmark.name + label, benchmark.fullname + label
        enabled = bool(getattr(benchmark, "enabled", True))
        self._call("time", timing_enabled=enabled)
        if enabled and self.result.sessions:
            show_in_benchmark(benchmark, self.result.sessions[-1]["samples_s"])
            benchmark.extra_info.update(perfgate_case=self.case.id, settings=self.result.stored_settings())
        else:
            benchmark.pedantic(lambda: None, rounds=1)

    def check_regression(self) -> None:
        self._call("check_regression")

    def close(self) -> None:
        if self._open and self.worker.proc is not None and self.worker.proc.poll() is None:
            with contextlib.suppress(WorkerGone):
                self.worker.call(
                    {"op": "close", "case_id": self.case.id}, time.monotonic() + 60, lambda s: None
                )
        self._open = False

    def _call(self, step: str, **extra: Any) -> None:
        if self._deadline is None:
            limit = (self.timeout_s + HANG_GRACE_S) if self.timeout_s else 10 * 24 * 3600.0
            self._deadline = time.monotonic() + limit
        request = {
            "op": "step",
            "step": step,
            "case_id": self.case.id,
            "nodeid": self.nodeid,
            "compare": self.compare,
            "require_baseline": self.require_baseline,
            "repeats": self.repeats,
            "earlier": self.earlier.to_dict() if self.earlier is not None else None,
            **extra,
        }
        try:
            reply = self.worker.call(request, self._deadline, self.on_step)
        except WorkerGone as gone:
            self._open = False
            message = str(gone)
            if message.startswith("timed out"):
                message = (
                    f"{self.case.id}: timed out after {self.timeout_s:g} s{message.removeprefix('timed out')}"
                )
                raise CaseError(message, gone.details) from None
            error = CaseError(f"{self.case.id}: {message}", gone.details)
            error.status = "crashed"
            raise error from None
        self._open = True
        if reply.get("result"):
            self.result = CaseResult.from_dict(reply["result"])
        outcome, message = reply.get("outcome"), reply.get("message") or ""
        if outcome == "skipped":
            pytest.skip(message)
        if outcome == "failed":
            pytest.fail(message, pytrace=False)
        if outcome == "error":
            raise CaseError(message, reply.get("details"))


def child_args(config: pytest.Config, options: dict[str, str | None]) -> list[str]:
    """The child's command line: this run's rootdir, ini, plugins and perfgate options, its test
    paths (for their conftests), and nothing that writes output (reports, junit, benchmark json)."""
    args = ["-q", "-p", "no:cacheprovider", f"--rootdir={config.rootpath}"]
    if config.inipath is not None:
        args += ["-c", str(config.inipath)]
    original = list(config.invocation_params.args)
    for index, arg in enumerate(original):
        if arg == "-p" and index + 1 < len(original) and "xdist" not in original[index + 1]:
            args += ["-p", original[index + 1]]
        elif arg.startswith("-p") and len(arg) > 2 and "xdist" not in arg:
            args.append(arg)
        elif arg == "-o" and index + 1 < len(original):
            args += ["-o", original[index + 1]]
        elif arg.startswith(("--override-ini=", "--import-mode=", "--confcutdir=")):
            args.append(arg)
    args += [f"--{name}={value}" for name, value in options.items() if value]
    args += sorted({str(Path(a.split("::")[0])) for a in config.args})
    return args


def serve(config: pytest.Config, fds: str, make_run: Callable[[dict[str, Any]], Any]) -> None:
    """The child's loop: run each step the parent sends with an ordinary ``CaseRun``, answer it."""
    from perfgate.guard import CaseTimeout

    read_fd, write_fd = (int(fd) for fd in fds.split(","))
    incoming = os.fdopen(read_fd, "r", encoding="utf-8")
    outgoing = os.fdopen(write_fd, "w", encoding="utf-8")

    def send(message: dict[str, Any]) -> None:
        outgoing.write(json.dumps(message, default=str) + "\n")
        outgoing.flush()

    runs: dict[str, Any] = {}
    send({"event": "ready", "pid": os.getpid()})
    for line in incoming:
        request = json.loads(line)
        if request.get("op") == "exit":
            break
        if request.get("op") == "close":
            run = runs.pop(request["case_id"], None)
            if run is not None:
                run.close()
            send({"outcome": "ok"})
            continue
        run = runs.get(request["case_id"])
        if run is None:
            run = runs[request["case_id"]] = make_run(request)
            run.guard.on_step = lambda step: send({"event": "step", "step": step})
        if "timing_enabled" in request:
            run.timing_enabled = request["timing_enabled"]
        reply: dict[str, Any] = {"outcome": "ok"}
        try:
            method = getattr(run, request["step"])
            method(None) if request["step"] == "time" else method()
        except pytest.skip.Exception as exc:
            reply = {"outcome": "skipped", "message": str(exc.msg)}
        except pytest.fail.Exception as exc:
            reply = {"outcome": "failed", "message": str(exc.msg)}
        except CaseError as exc:
            reply = {"outcome": "error", "message": str(exc), "details": exc.details}
        except CaseTimeout as exc:
            reply = {"outcome": "error", "message": str(exc)}
        except Exception as exc:  # perfgate's own failure: still an answer, with its traceback
            import traceback

            reply = {
                "outcome": "error",
                "message": f"{request['case_id']}: {exc!r}",
                "details": traceback.format_exc(),
            }
        if reply["outcome"] == "failed":
            run.result.status = "failed"
        reply["result"] = run.result.to_dict()
        send(reply)
    for run in runs.values():
        run.close()
