"""Where a sweep's points run: one session per task, in this process or on Dask workers.

`run_point(task)` runs one point's session wherever it is called (it is the Dask task): it finds the session
the point already has (`points/<index>.json` in the sweep folder, written as soon as a session folder exists,
so a task retried after its worker died finds the session it had started), skips it when completed, resumes
it when interrupted, failed or left running by a dead process, or starts a new one. It returns a small dict
(status, session id, error, seconds, worker) and never raises for a failed session, so Dask retries only what
is worth retrying: the driver (`rig.sweeps.SweepRunner`) resubmits a point whose failure was not a mistake the
user must fix (`retryable`), and Dask itself reschedules a task whose worker died (up to
`distributed.scheduler.allowed-failures` times, then the point is reported failed with `KilledWorker`). A
session stopped before its first step was done (perhaps half made) is replaced by a new one.

Executors: `Sequential` (in-process, one point after another) and `DaskExecutor` (a `LocalCluster` of
`workers` processes with one thread each, or a running scheduler). Both take tasks with `submit` and give
`(task, outcome)` pairs from `results()` as points finish, also for tasks submitted while iterating (retries).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import RigError

#: how long a retried task waits for a session left "running" by a worker on another host to go stale
STALE_WAIT_S = 20.0


@dataclass(frozen=True)
class PointTask:
    """Everything a worker needs to run one point: the point (index, label, settings, its resolved protocol),
    the sweep (id, folder), the sweep file's text (saved as the session's protocol.toml) and `--set` overrides."""

    index: int
    label: str
    settings: dict[str, Any]
    resolved: dict[str, Any] = field(repr=False)
    sweep_id: str
    sweep_dir: str
    text: str | None = field(default=None, repr=False)
    source: str = "<protocol>"
    overrides: list[str] = field(default_factory=list)
    gpu: bool = False
    attempt: int = 1
    retries: int = 0  # tries left after this one, for failures that are not the user's to fix

    def retry(self) -> "PointTask":
        return dataclasses.replace(self, attempt=self.attempt + 1, retries=self.retries - 1)


def run_point(task: PointTask, shared: Any = None) -> dict[str, Any]:
    """Run (or skip, or resume) the session of one point; returns its outcome (see the module docstring).
    `shared`: the point's preflight (`rig.steps.Shared`), when the caller made it already (in-process only)."""
    from .errors import is_user_error
    from .layout import SweepLayout

    t0 = time.perf_counter()
    layout = SweepLayout(task.sweep_dir)
    out: dict[str, Any] = {"index": task.index, "attempt": task.attempt, "session": None, "error": None,
                           "worker": f"{socket.gethostname()}:{os.getpid()}", "retryable": False}
    try:
        with _worker_threads():
            session = _run(task, layout, shared)
        out.update(status=session.status, session=session.id)
        if session.status != "completed":
            out["error"] = (session.info.get("error") or {}).get("message") or f"session {session.status}"
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001  (reported, never lost)
        where = getattr(e, "session_path", None)
        out.update(status="failed", error=f"{type(e).__name__}: {e}", retryable=not is_user_error(e),
                   session=Path(where).name if where else None)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _run(task: PointTask, layout: Any, shared: Any = None) -> Any:
    from .protocol import validate_protocol
    from .session import Session, resume, start
    from .sweeps import point_session

    folder = point_session(layout, task.index)
    if folder is not None:
        session = Session(folder)
        status = _wait_until_stale(session)
        if status == "completed":
            return session
        if status == "running":
            raise RigError(f"point {task.index}: its session {session.id} is being run by pid "
                           f"{session.info.get('pid')} on {session.info.get('host')}")
        if not any(s.get("status") == "done" for s in session.info.get("steps", {}).values()):
            shutil.rmtree(folder)  # stopped before its first step (maybe half made): nothing to keep
        else:
            try:
                return resume(folder, progress=False)
            except RigError as e:
                if getattr(e, "session_path", None) is not None:  # a step of the resumed session failed
                    raise
                # refused (the code or the file changed since): the point gets a new session below
    proto = validate_protocol(task.resolved, source=f"{task.source} (point {task.index})")
    meta = {"sweep": task.sweep_id, "point": {"index": task.index, "label": task.label, "settings": task.settings}}

    def claim(session_folder: Path) -> None:
        layout.write_json(layout.point(task.index), {"session": session_folder.name, "attempt": task.attempt})

    return start(proto, task.text, task.source, layout.archive, task.overrides or None, progress=False,
                 sweep=meta, on_created=claim, shared=shared)


def _wait_until_stale(session: Any) -> str:
    """The session's status, after waiting (up to `STALE_WAIT_S`) for one left "running" by a process on
    another host to show a stale heartbeat."""
    deadline = time.monotonic() + STALE_WAIT_S
    status = session.status
    while status == "running" and time.monotonic() < deadline:
        time.sleep(1.0)
        status = session.status
    return status


@contextlib.contextmanager
def _worker_threads() -> Iterator[None]:
    """On a Dask worker, let torch use as many threads as the worker has (one by default), not every core."""
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(int(threads), 1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------------
# executors


class Sequential:
    """Runs each point in this process, one after another. `prepared`: point index -> its preflight, made
    already (the session reuses it instead of building the subject again)."""

    def __init__(self, prepared: dict[int, Any] | None = None) -> None:
        self.queue: collections.deque[PointTask] = collections.deque()
        self.prepared = dict(prepared or {})

    def __enter__(self) -> "Sequential":
        return self

    def __exit__(self, *exc: object) -> None:
        self.queue.clear()

    def describe(self) -> dict[str, Any]:
        return {"kind": "sequential"}

    def submit(self, task: PointTask) -> None:
        self.queue.append(task)

    def cancel(self) -> None:
        self.queue.clear()

    def results(self) -> Iterator[tuple[PointTask, dict[str, Any]]]:
        while self.queue:
            task = self.queue.popleft()
            yield task, run_point(task, self.prepared.pop(task.index, None))


class DaskExecutor:
    """Runs each point as one Dask task: on a `LocalCluster` of `workers` processes, one thread each (made on
    entry, closed on exit), or on the running scheduler at `scheduler`. Tasks of points that need a GPU ask
    for the worker resource `GPU` (1), so they run only on workers that declare it."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, gpu: bool = False):
        if scheduler is None and (workers is None or int(workers) < 1):
            raise RigError(f"--workers must be 1 or more, got {workers}")
        self.workers, self.scheduler, self.gpu = workers, scheduler, gpu
        self.client: Any = None
        self.cluster: Any = None
        self.pending: dict[str, PointTask] = {}
        self.done: Any = None

    def describe(self) -> dict[str, Any]:
        if self.scheduler:
            return {"kind": "dask", "scheduler": self.scheduler}
        return {"kind": "dask-local", "workers": int(self.workers), "threads_per_worker": 1}

    def __enter__(self) -> "DaskExecutor":
        try:
            from distributed import Client, LocalCluster, as_completed
        except ImportError:  # pragma: no cover  (a dependency of rig)
            raise RigError("sweeps on Dask need `distributed`: pip install \"dask[distributed]\"") from None
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout="15s")
            except (OSError, TimeoutError) as e:
                raise RigError(f"cannot reach the Dask scheduler at {self.scheduler} ({e}); start one with "
                               "`dask scheduler` and workers with `dask worker ADDRESS`") from None
            if self.gpu and not any((w.get("resources") or {}).get("GPU") for w in
                                    self.client.scheduler_info()["workers"].values()):
                self.client.close()
                raise RigError(f"some points run on CUDA but no worker of {self.scheduler} declares a GPU: start "
                               "GPU workers with `dask worker ADDRESS --resources GPU=1`")
        else:
            resources = None
            if self.gpu:
                import torch

                if not torch.cuda.is_available():
                    raise RigError("some points run on CUDA (subject.device) but this machine has no CUDA device")
                resources = {"GPU": 1}
            import dask

            # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also fixes glibc's mmap threshold, so
            # every temporary array above 128 KiB is mapped and zeroed afresh: the spatial nulls ran 2.2x slower
            # (20.2 vs 9.4 ms CPU per unit), the record step 1.22x (417 vs 341 CPU s for the full circles-clip
            # recording). Workers keep Dask's one-thread BLAS settings.
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                self.cluster = LocalCluster(n_workers=int(self.workers), threads_per_worker=1, processes=True,
                                            dashboard_address=None, resources=resources, silence_logs=40)
            self.client = Client(self.cluster)
        self.done = as_completed()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()

    def submit(self, task: PointTask) -> None:
        future = self.client.submit(run_point, task, key=f"rig-point-{task.sweep_id}-{task.index}-{task.attempt}",
                                    resources={"GPU": 1} if task.gpu else None, pure=False)
        self.pending[future.key] = task
        self.done.add(future)

    def cancel(self) -> None:
        """Stop the points not finished yet (their sessions, if started, are left to resume)."""
        self.client.cancel(list(self.done.futures))
        self.done.clear()

    def results(self) -> Iterator[tuple[PointTask, dict[str, Any]]]:
        for future in self.done:
            task = self.pending.pop(future.key)
            try:
                outcome = future.result()
            except Exception as e:  # noqa: BLE001  (the worker died too often, or the task was lost)
                outcome = {"index": task.index, "status": "failed", "error": f"{type(e).__name__}: {e}",
                           "retryable": True, "session": None, "seconds": None}
            yield task, outcome


def executor(workers: int | None, scheduler: str | None, points: list[Any]) -> Sequential | DaskExecutor:
    """The executor for these options: sequential without `workers` and `scheduler`, else Dask."""
    if workers is None and scheduler is None:
        return Sequential()
    return DaskExecutor(workers, scheduler, gpu=any(p.needs_gpu for p in points))
