"""pytest-timeout, made diagnosable: a timed-out test dumps every asyncio task and every thread.

Why this exists: pytest-timeout's own dump shows only thread stacks. Our tests run an
asyncio loop in the main thread, so a hung test shows the main thread parked in
``selectors.select`` and nothing about *which* ``await`` never returned (issue #11: two
hangs were undiagnosable that way). This plugin takes over pytest-timeout's timer hooks
(``pytest_timeout_set_timer`` / ``pytest_timeout_cancel_timer``, which are firstresult
hooks, so ours runs instead of the built-in one) and on expiry writes:

* every asyncio task of every loop, each with its full await chain (``Task.get_stack``
  only returns the outermost coroutine frame of a suspended task, so the chain is walked
  through ``cr_await`` / ``gi_yieldfrom`` / ``ag_await``, and through async-generator
  ``asend`` objects, which is how a fixture's teardown is awaited) down to the leaf it
  waits on (a Future, with its callbacks);
* every thread's stack, the interrupted main thread included.

How it fires, and why it cannot itself hang:

* ``method=signal`` (the default, main thread): SIGALRM runs the handler in the main
  thread between bytecodes, also while the loop sits in ``select`` (PEP 475: the
  syscall is interrupted, the handler runs, its exception propagates out of
  ``run_until_complete``). The handler writes the dump to the real stderr at once (so
  it survives a later hard exit, and an xdist worker's stderr reaches the CI log),
  attaches it to the report as a "timeout dump" section, and fails the current phase
  (setup, call or teardown; the timer covers all three).
* A backstop thread timer fires ``grace`` seconds later if the phase still has not
  ended: the SIGALRM handler never ran (main thread stuck in C code), or a teardown
  hangs again after the failed call (e.g. a fixture awaits the task that hung). It
  dumps again and ends the process with ``os._exit(1)``, as pytest-timeout's thread
  method does: a red run with a dump, never a silent hang until CI's own limit.
* ``method=thread`` (or pytest running outside the main thread): only that thread
  timer, with the dump, then ``os._exit(1)``.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

import pytest
import pytest_timeout

#: Second budget after the first expiry before the process is ended (capped, so a test
#: marked with a long timeout does not hold CI for twice that long).
MAX_GRACE_S = 60.0

_BACKSTOP_NAME = "timeout-dump backstop"
_PHASE = pytest.StashKey[str]()
_STDERR_FD = pytest.StashKey[int]()
_LOCK = threading.Lock()


def pytest_configure(config: pytest.Config) -> None:
    # Same trick as pytest's faulthandler plugin: dup the real stderr now, before any test
    # captures fd 2, so the dump reaches the terminal / CI log even under capture=fd.
    try:
        config.stash[_STDERR_FD] = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # pragma: no cover - exotic stderr
        config.stash[_STDERR_FD] = 2


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(_STDERR_FD, 2)
    if fd != 2:
        os.close(fd)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item.stash[_PHASE] = "setup"
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    item.stash[_PHASE] = "call"
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    item.stash[_PHASE] = "teardown"
    return (yield)


# ---------------------------------------------------------------------------------------
# Rendering


def _all_tasks() -> list[asyncio.Task[Any]]:
    """Every live task of every loop in the process (not only the running loop's)."""
    sets: list[Iterable[Any]] = []
    for name in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):  # 3.11; 3.12+
        s = getattr(asyncio.tasks, name, None)
        if s is not None:
            sets.append(s)
    for _ in range(100):  # a WeakSet can change size while we copy it (GC, other threads)
        try:
            found: dict[int, asyncio.Task[Any]] = {}
            for s in sets:
                for t in list(s):
                    found[id(t)] = t
            break
        except RuntimeError:
            continue
    else:  # pragma: no cover
        found = {}
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        for t in asyncio.all_tasks(loop):
            found[id(t)] = t
    return [t for t in found.values() if not t.done()]


_AWAIT_ATTRS = ("cr_await", "gi_yieldfrom", "ag_await")
_FRAME_ATTRS = ("cr_frame", "gi_frame", "ag_frame")
_CORO_TYPES = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)


def _await_chain(coro: object) -> tuple[list[FrameType], object | None]:
    """Frames from the task's coroutine down the await chain, and the leaf awaited on."""
    frames: list[FrameType] = []
    seen: set[int] = set()
    obj: object | None = coro
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        if isinstance(obj, asyncio.Future):
            return frames, obj  # a leaf (a Task awaited on is dumped on its own)
        frame = next((getattr(obj, a) for a in _FRAME_ATTRS if getattr(obj, a, None)), None)
        if frame is not None:
            frames.append(frame)
        attrs = [a for a in _AWAIT_ATTRS if hasattr(obj, a)]
        if attrs:
            obj = getattr(obj, attrs[0])
            continue
        # async_generator_asend / athrow (how `await agen.__anext__()` looks, e.g. an
        # async fixture's teardown) and other wrappers expose no attribute: find the
        # generator they drive among their GC referents.
        inner = [r for r in gc.get_referents(obj) if isinstance(r, _CORO_TYPES)]
        if not inner:
            # A FutureIter (what `await fut` suspends in) refers to its Future: show that,
            # with its callbacks, rather than the iterator.
            futs = [r for r in gc.get_referents(obj) if isinstance(r, asyncio.Future)]
            return frames, futs[0] if futs else obj
        obj = inner[0]
    return frames, None


def _format_frames(frames: list[FrameType]) -> str:
    summary = traceback.StackSummary.extract(
        ((f, f.f_lineno or 0) for f in frames), lookup_lines=True, capture_locals=False
    )
    return "".join(summary.format())


def _render_tasks(out: io.StringIO) -> None:
    tasks = _all_tasks()
    out.write(f"{'=' * 30} asyncio tasks ({len(tasks)} pending) {'=' * 30}\n")
    if not tasks:
        out.write("(no pending asyncio task in this process)\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        coro = task.get_coro()
        qual = getattr(coro, "__qualname__", type(coro).__name__)
        out.write(f"--- Task {task.get_name()!r} coro={qual} ({task!r})\n")
        frames, leaf = _await_chain(coro)
        if frames:
            out.write("Await chain (outermost first; each line is where it is suspended):\n")
            out.write(_format_frames(frames))
        else:
            out.write("(no frame: the task has not started or is finishing)\n")
        if leaf is not None:
            out.write(f"  waiting on: {leaf!r}\n")


def _render_threads(out: io.StringIO, current_frame: FrameType | None) -> None:
    names = {t.ident: t for t in threading.enumerate()}
    me = threading.get_ident()
    frames = sys._current_frames()
    out.write(f"{'=' * 30} threads ({len(frames)}) {'=' * 30}\n")
    for ident, frame in frames.items():
        thread = names.get(ident)
        if thread is not None and thread.name.startswith(_BACKSTOP_NAME):
            continue  # our own watchdog, idle in its timer
        label = f"{thread.name}{' (daemon)' if thread.daemon else ''}" if thread else "<unknown>"
        if ident == me:
            if current_frame is None:
                continue  # the watchdog thread itself
            frame = current_frame
            label += ", interrupted by the timeout"
        out.write(f"--- Thread {label} ident={ident}\n")
        out.write("".join(traceback.format_stack(frame)))


def render_dump(title: str, current_frame: FrameType | None = None) -> str:
    """The whole dump as text: every pending asyncio task, then every thread."""
    out = io.StringIO()
    out.write(f"{'+' * 30} {title} {'+' * 30}\n")
    for part in (lambda: _render_tasks(out), lambda: _render_threads(out, current_frame)):
        try:
            part()
        except Exception:  # a broken dump must not hide the timeout itself
            out.write("(dump failed)\n" + traceback.format_exc())
    out.write(f"{'+' * 30} end of {title} {'+' * 30}\n")
    return out.getvalue()


def _write_stderr(config: pytest.Config, text: str) -> None:
    fd = config.stash.get(_STDERR_FD, 2)
    data = text.encode("utf-8", "replace")
    with _LOCK:
        while data:
            try:
                n = os.write(fd, data)
            except InterruptedError:
                continue
            except OSError:
                return
            data = data[n:]


# ---------------------------------------------------------------------------------------
# Timers (replacing pytest-timeout's, which only dumps threads)


def _title(item: pytest.Item, timeout: float, what: str) -> str:
    phase = item.stash.get(_PHASE, "setup")
    return f"Timeout dump: {item.nodeid} ({phase}) {what} after {timeout:g} s"


def _hard_exit(item: pytest.Item, timeout: float, what: str) -> None:
    settings_dbg = item.stash.get(_DEBUG_CHECK, True)
    if settings_dbg and pytest_timeout.is_debugging():
        return
    text = render_dump(_title(item, timeout, what))
    _write_stderr(item.config, text + "Ending the test process (os._exit(1)).\n")
    sys.stdout.flush()
    os._exit(1)


_DEBUG_CHECK = pytest.StashKey[bool]()
_CANCEL = pytest.StashKey[Callable[[], None]]()
_FUNC_ONLY = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool:
    timeout = float(settings.timeout)
    item.stash[_DEBUG_CHECK] = not settings.disable_debugger_detection
    item.stash[_FUNC_ONLY] = bool(settings.func_only)
    _cancel(item)  # never two timers for one item
    use_signal = (
        settings.method == "signal" and threading.current_thread() is threading.main_thread()
    )
    grace = min(timeout, MAX_GRACE_S)
    fired = threading.Event()

    backstop_after = timeout + grace if use_signal else timeout
    what = "still hung after the timeout and its grace" if use_signal else "timed out"
    backstop = threading.Timer(backstop_after, _hard_exit, (item, backstop_after, what))
    backstop.name = f"{_BACKSTOP_NAME} {item.nodeid}"
    backstop.daemon = True

    previous: Any = None
    if use_signal:

        def handler(signum: int, frame: FrameType | None) -> None:
            __tracebackhide__ = True
            if fired.is_set():
                return
            if item.stash[_DEBUG_CHECK] and pytest_timeout.is_debugging():
                return
            fired.set()
            phase = item.stash.get(_PHASE, "setup")
            text = render_dump(_title(item, timeout, "timed out"), frame)
            _write_stderr(item.config, text)
            item.add_report_section(phase, "timeout dump", text)
            pytest.fail(
                f"Timeout (>{timeout:g}s) from pytest-timeout, in {phase}. Every asyncio "
                "task's await chain and every thread's stack are in this report's 'timeout "
                "dump' section (also written to stderr when it fired).",
                pytrace=False,
            )

        previous = signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    backstop.start()

    def cancel() -> None:
        if use_signal:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        backstop.cancel()

    item.stash[_CANCEL] = cancel
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool:
    # pytest-timeout also calls this from pytest_exception_interact, i.e. as soon as the
    # call phase fails: the built-in timer then no longer covers the teardown, and a
    # teardown that hangs after a failed test hangs forever. So unless the timer is for
    # the call only (timeout_func_only), it stays armed until the protocol ends.
    if item.stash.get(_FUNC_ONLY, False):
        _cancel(item)
    return True


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[object]:
    try:
        return (yield)
    finally:
        _cancel(item)


def _cancel(item: pytest.Item) -> None:
    cancel = item.stash.get(_CANCEL, None)
    if cancel is not None:
        del item.stash[_CANCEL]
        cancel()
