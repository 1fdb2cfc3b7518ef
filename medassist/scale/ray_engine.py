"""``medassist batch --engine ray``: the batch on a Ray cluster (issue 8).

Ray Data reads the list of due studies; CPU tasks claim each study in the ingest queue,
decode its DICOM series and resample it (:func:`medassist.scale.stages.prepare_study`); a
pool of actors (:class:`DraftActor`, ``ActorPoolStrategy``), each holding the model loaded
once, runs batched inference (:func:`medassist.drafting.infer`) and stores every draft through
the pipeline's idempotent storage layer, committing the queue's ``done`` in the same
transaction.  Nothing else is Ray-specific: the stages are the in-process engine's.

Guarantees (the same as one machine):

* each study is claimed with a token; only the holder of the current token can commit its
  result, and the input key returns an already stored report, so a retried task or a
  restarted actor never duplicates a report;
* claims are made under the driver's ``host:pid``: a rerun after the driver died takes them
  back at once (other hosts: when the lease runs out);
* a failing study is recorded with its stage and reason (``PipelineError: build_volume: …``)
  and the others go on; an actor or worker process that dies is restarted by Ray and its
  batch retried; the run's job log records the death (``worker_died``, with the process id
  and Ray's exit type, from Ray's worker table) and, when Ray's actor table shows it in time,
  the restart (``actor_restarted``, or ``actor_replaced`` when Ray Data started a new actor
  in its place).

Ray is optional (``pip install 'medassist[ray]'``); :func:`require_ray` raises
:class:`~medassist.errors.EngineUnavailableError` without it.  Nothing here is imported by the
in-process engine.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medassist.errors import EngineUnavailableError, QueueStateError, UsageError
from medassist.pacs.models import IngestItem, IngestState
from medassist.scale.stages import JobLog

log = logging.getLogger("medassist.batch")
T = TypeVar("T")

RAY_INSTALL = "pip install 'medassist[ray]'"
#: states of the rows that come back from the actors
PREPARED, DONE = "prepared", IngestState.DONE.value


def require_ray() -> ModuleType:
    """``ray`` with Ray Data, or :class:`EngineUnavailableError` saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise EngineUnavailableError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); install the "
            f"optional extra with `{RAY_INSTALL}` (or use the default --engine inprocess)",
            engine="ray", install=RAY_INSTALL) from exc
    return ray


@dataclass(frozen=True)
class RayConfig:
    """How the Ray engine runs.  ``address`` None starts a private local Ray on this machine
    (``num_cpus``, ``object_store_mb``, temp files under a fresh folder, removed after);
    ``"auto"`` or ``HOST:PORT`` joins a running cluster (``ray start --head``)."""

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    cpus_per_task: float = 1.0
    batch_size: int = 4
    num_cpus: int | None = None
    object_store_mb: int = 512
    #: local Ray only: the folder for its session files (default: a fresh one under the
    #: system's temp folder, removed afterwards)
    temp_dir: str | None = None
    lease_s: float = 1800.0
    threshold: float | None = None
    max_rounds: int = 3
    #: memory reserved per decode task (MiB): a CT series decoded and resampled
    task_memory_mb: int = 512

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise UsageError("--actors must be >= 1")
        if self.batch_size < 1:
            raise UsageError("--batch-size must be >= 1")
        if self.gpus_per_actor < 0 or self.cpus_per_actor < 0 or self.cpus_per_task <= 0:
            raise UsageError("--gpus-per-actor and --cpus-per-actor must be >= 0, "
                             "--cpus-per-task > 0")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise UsageError("num_cpus must be >= 1")
        if self.object_store_mb < 64:
            raise UsageError("object_store_mb must be >= 64")
        if self.lease_s <= 0 or self.max_rounds < 1:
            raise UsageError("lease_s must be > 0 and max_rounds >= 1")
        if self.task_memory_mb < 1:
            raise UsageError("task_memory_mb must be >= 1")
        if self.address is not None and not self.address.strip():
            raise UsageError("--address must be 'auto' or HOST:PORT")


@dataclass(frozen=True)
class RunContext:
    """Everything a task or actor needs, resolved once in the driver (picklable): absolute
    paths, the database URL, the claim owner, the finding labels and the model config."""

    db_url: str
    checkpoint: str
    checkpoint_sha256: str
    emr_dir: str | None
    owner: str
    labels: tuple[str, ...]
    model_cfg: Any
    lease_s: float = 1800.0
    threshold: float | None = None
    require_emr: bool = True
    pseudonym_key: bytes | None = None


# --------------------------------------------------------------------------- workers

_FACTORIES: dict[str, sessionmaker[Session]] = {}


def _factory(url: str) -> sessionmaker[Session]:
    """One engine per worker process and URL (the driver migrated the schema)."""
    f = _FACTORIES.get(url)
    if f is None:
        from medassist.storage import make_engine, session_factory

        f = _FACTORIES[url] = session_factory(make_engine(url, pool_size=2))
    return f


def _row(uid: str, state: str, reason: str = "", payload: bytes = b"") -> dict[str, Any]:
    return {"study_uid": uid, "state": state, "reason": reason, "payload": payload}


def prepare_row(row: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Ray CPU task: claim one study, run the CPU stages, hand the prepared study on.

    A study that fails here is recorded (stage and reason) and passes on as a finished row;
    one that is no longer due (done, or claimed by another run) passes on as ``not_due``."""
    from medassist.scale import stages
    from medassist.storage import unit_of_work

    uid = str(row["study_uid"])
    factory = _factory(ctx.db_url)
    with unit_of_work(factory) as s:
        claim = stages.claim_study(s, uid, owner=ctx.owner, lease_s=ctx.lease_s)
    if claim is None:
        return _row(uid, "not_due")
    try:
        ps = stages.prepare_study(Path(str(row["location"])), uid, ctx.model_cfg,
                                  ctx.checkpoint_sha256,
                                  emr_dir=Path(ctx.emr_dir) if ctx.emr_dir else None,
                                  require_emr=ctx.require_emr)
    except Exception as exc:  # recorded in the queue with its stage; the run goes on
        failure = stages.classify(exc)
        try:
            with unit_of_work(factory) as s:
                state = stages.record_failure(s, claim, failure)
        except QueueStateError:
            return _row(uid, "lost", "the claim was lost while the study was prepared")
        return _row(uid, state, failure.reason)
    return _row(uid, PREPARED, "", pickle.dumps((claim, ps), protocol=5))


class DraftActor:
    """Ray actor (``ActorPoolStrategy``): loads the model once, drafts batches of prepared
    studies and stores each one (draft + queue ``done`` in one transaction)."""

    def __init__(self, ctx: RunContext, gpus: float = 0.0) -> None:
        import ray

        from medassist.drafting import load_model

        self.ctx = ctx
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it reserved for this actor
        self.lm = load_model(ctx.checkpoint, device="cuda" if gpus > 0 else "cpu")
        if self.lm.checkpoint_sha256 != ctx.checkpoint_sha256:
            raise UsageError(f"checkpoint {ctx.checkpoint} on this node differs from the "
                             "driver's; deploy the same checkpoint on every node")
        rc = ray.get_runtime_context()
        self.actor_id = str(rc.get_actor_id() or "")
        self.node_id = str(rc.get_node_id())
        self.pid = os.getpid()
        self.reconstructed = bool(rc.was_current_actor_reconstructed)
        if self.reconstructed:
            log.warning("actor %s restarted (pid %d) after its process died", self.actor_id,
                        self.pid)
        self.gpus = gpus

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medassist.scale import stages

        t0 = time.perf_counter()
        uids = [str(u) for u in batch["study_uid"]]
        states = [str(s) for s in batch["state"]]
        reasons = [str(r) for r in batch["reason"]]
        report_ids = [-1] * len(uids)
        todo: list[tuple[int, Any, stages.PreparedStudy]] = []
        for i, (st, payload) in enumerate(zip(states, batch["payload"], strict=True)):
            if st == PREPARED:
                claim, ps = pickle.loads(bytes(payload))  # our own tasks' output
                todo.append((i, claim, ps))
        drafts = stages.draft_batch(self.lm, [t[2] for t in todo], self.ctx.threshold)
        for (i, claim, ps), data in zip(todo, drafts, strict=True):
            states[i], reasons[i], report_ids[i] = self._store(claim, ps, data)
        n = len(uids)
        work = (time.perf_counter() - t0) / max(1, len(todo))
        return {"study_uid": np.asarray(uids, dtype=object),
                "state": np.asarray(states, dtype=object),
                "reason": np.asarray(reasons, dtype=object),
                "report_id": np.asarray(report_ids, dtype=np.int64),
                "pid": np.full(n, self.pid, dtype=np.int64),
                "actor_id": np.asarray([self.actor_id] * n, dtype=object),
                "node_id": np.asarray([self.node_id] * n, dtype=object),
                "reconstructed": np.full(n, self.reconstructed, dtype=bool),
                # the actor's seconds per drafted study in this batch (infer + store)
                "work_s": np.asarray([work if st == PREPARED else 0.0 for st in
                                      batch["state"]], dtype=np.float64)}

    def _store(self, claim: Any, ps: Any, data: Any) -> tuple[str, str, int]:
        from medassist.errors import PipelineError
        from medassist.pacs import queue
        from medassist.scale import stages
        from medassist.storage import unit_of_work

        factory = _factory(self.ctx.db_url)
        ctx = self.ctx
        try:
            if isinstance(data, PipelineError):
                raise data
            with unit_of_work(factory) as s:
                stored = stages.store_study(s, ps, data, checkpoint_sha256=ctx.checkpoint_sha256,
                                            labels=ctx.labels,
                                            pseudonym_key=ctx.pseudonym_key)
                queue.finish(s, claim, result=stages.result_summary(stored, ps.input_key)
                             | {"report_id": stored.report_id})
            return DONE, "", stored.report_id
        except QueueStateError:
            with unit_of_work(factory) as s:  # an earlier attempt of this batch committed it
                state = stages.row_state(s, claim.study_uid) or "lost"
            return state, ("" if state == DONE else "the claim was lost"), -1
        except Exception as exc:
            failure = stages.classify(exc)
            try:
                with unit_of_work(factory) as s:
                    return stages.record_failure(s, claim, failure), failure.reason, -1
            except QueueStateError:
                return "lost", "the claim was lost", -1


# --------------------------------------------------------------------------- driver


@dataclass
class RayRun:
    """What :func:`run_ray` measured: rows back from the actors, the job log, timings."""

    rows: list[dict[str, Any]]
    log: JobLog
    startup_s: float
    process_s: float
    cluster: dict[str, Any]
    #: seconds from the start of processing to the first result row (the actors started,
    #: the model loaded in them, the first batch decoded and drafted); None without rows
    first_row_s: float | None = None

    @property
    def actor_busy_s(self) -> float:
        """Seconds the actors spent drafting and storing (summed over actors)."""
        return float(sum(float(r["work_s"]) for r in self.rows))


def _abs_sqlite(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return url
    db = u.database or ""
    if db in ("", ":memory:") or db.startswith("file:"):
        raise UsageError("--engine ray needs a database every worker can open: a SQLite "
                         "file (one machine) or PostgreSQL (a cluster), not in-memory SQLite")
    return u.set(database=str(Path(db).resolve())).render_as_string(hide_password=False)


def _model_cfg(checkpoint: Path) -> Any:
    from multimodal.checkpoint import CONFIG
    from multimodal.config import ModelConfig, from_mapping

    raw = json.loads((checkpoint / CONFIG).read_text(encoding="utf-8"))
    return from_mapping(ModelConfig, raw["model"])


def make_context(db_url: str, checkpoint: Path, emr_dir: Path | None, cfg: RayConfig,
                 require_emr: bool = True) -> RunContext:
    from medassist.model_data import finding_labels
    from medassist.pacs.queue import worker_id
    from medassist.pipeline import PipelineProcessor

    pp = PipelineProcessor(Path(checkpoint))  # validates the checkpoint
    return RunContext(db_url=_abs_sqlite(db_url), checkpoint=str(pp.checkpoint.resolve()),
                      checkpoint_sha256=pp.checkpoint_sha256,
                      emr_dir=str(emr_dir.resolve()) if emr_dir is not None else None,
                      owner=worker_id(), labels=finding_labels(),
                      model_cfg=_model_cfg(pp.checkpoint), lease_s=cfg.lease_s,
                      threshold=cfg.threshold, require_emr=require_emr,
                      pseudonym_key=pp.pseudonym_key)


def _private_auth_token() -> None:
    """A private local Ray keeps Ray's token authentication, but with a token of this process
    (``$RAY_AUTH_TOKEN``, inherited by the processes Ray starts) instead of one written to
    ``~/.ray/auth_token``.  A token configured by the user is left alone."""
    import secrets

    configured = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
    if any(os.environ.get(k) for k in configured):
        return
    if (Path.home() / ".ray" / "auth_token").is_file():
        return
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


@dataclass
class _Session:
    ray: ModuleType
    owned: bool
    tmp: str | None


def connect(cfg: RayConfig) -> _Session:
    """Join ``cfg.address``, or start a private local Ray; reuse one already initialised."""
    ray = require_ray()
    if ray.is_initialized():
        return _Session(ray, owned=False, tmp=None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg.address is not None:
        ray.init(address=cfg.address, log_to_driver=False)
        return _Session(ray, owned=True, tmp=None)
    _private_auth_token()
    # Ray's socket paths (<temp>/session_<time>_<pid>/sockets/plasma_store) must fit in 107
    # bytes: a given temp_dir is used as is (and left to its owner), else a short fresh one
    tmp = cfg.temp_dir or tempfile.mkdtemp(prefix="medassist-ray-")
    try:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False,
                 object_store_memory=cfg.object_store_mb << 20, _temp_dir=tmp,
                 log_to_driver=False)
    except BaseException:
        if cfg.temp_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _Session(ray, owned=True, tmp=None if cfg.temp_dir else tmp)


def disconnect(sess: _Session) -> None:
    if sess.owned:
        sess.ray.shutdown()
        if sess.tmp is not None:
            shutil.rmtree(sess.tmp, ignore_errors=True)


def _due(factory: sessionmaker[Session], uids: Sequence[str]) -> list[dict[str, str]]:
    """The queued, due ``batch`` rows among ``uids`` (after taking back dead claims)."""
    from medassist.pacs import queue
    from medassist.storage import unit_of_work

    out: list[dict[str, str]] = []
    with unit_of_work(factory) as s:
        queue.recover(s)
        now = queue.utcnow()
        for i in range(0, len(uids), 500):
            for r in s.scalars(select(IngestItem).where(
                    IngestItem.study_uid.in_(uids[i:i + 500]),
                    IngestItem.state == IngestState.QUEUED.value,
                    IngestItem.next_attempt_at <= now)):
                out.append({"study_uid": r.study_uid, "location": r.location or ""})
    return sorted(out, key=lambda r: r["study_uid"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _our_actors(ray: ModuleType, seen: dict[str, set[int]], since_ms: int
                ) -> dict[str, dict[str, Any]]:
    """GCS actor-table rows of this run's draft actors (Ray's private state API)."""
    from ray._private import state as ray_state

    job = ray.get_runtime_context().get_job_id()
    out: dict[str, dict[str, Any]] = {}
    for aid, info in ray_state.actors().items():
        # Ray Data wraps the actor class (``_MapWorker``): match by the actor ids seen in the
        # rows, or by class name
        cls = str(info.get("ActorClassName"))
        ours = aid in seen or "DraftActor" in cls or "MapWorker" in cls
        if info.get("JobID") == job and ours and int(info.get("StartTime") or 0) >= since_ms:
            out[aid] = info
    return out


def _settled(read: Callable[[], T], lagging: Callable[[T], bool], settle_s: float) -> T:
    """``read()`` a Ray table, and read it again every 0.1 s (up to ``settle_s``) while
    ``lagging`` says it has not caught up with a process death yet."""
    deadline = time.monotonic() + settle_s
    out = read()
    while lagging(out) and time.monotonic() < deadline:
        time.sleep(0.1)
        out = read()
    return out


def _lagging(ray: ModuleType, table: dict[str, dict[str, Any]]) -> bool:
    """An actor on this node that the table still shows ALIVE although its process is gone:
    the table has not caught up with a death yet (it takes a few hundred ms)."""
    node = ray.get_runtime_context().get_node_id()
    return any(i.get("State") == "ALIVE" and (i.get("Address") or {}).get("NodeID") == node
               and int(i.get("Pid") or 0) > 0 and not _pid_alive(int(i["Pid"]))
               for i in table.values())


def _restarted_actors(ray: ModuleType, seen: dict[str, set[int]], since_ms: int,
                      settle_s: float = 5.0) -> list[dict[str, Any]]:
    """This run's actors whose process died: restarted by Ray (``restarts`` >= 1), or dead
    and replaced (``restarts`` 0, ``replaced`` True); else those seen with more than one
    process id in the rows.

    The actor table lags a death by a few hundred ms, so while an actor of this node is
    shown ALIVE with its process gone, the table is read again (up to ``settle_s``)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        table = _settled(lambda: _our_actors(ray, seen, since_ms),
                         lambda t: _lagging(ray, t), settle_s)
        for aid, info in table.items():
            restarts = int(info.get("NumRestarts") or 0)
            died = info.get("State") == "DEAD" and "worker process has died" in str(
                info.get("DeathCause") or "")
            if restarts or died:
                out[aid] = {"actor_id": aid, "restarts": restarts, "replaced": died,
                            "pid_now": int(info.get("Pid") or 0),
                            "pids_seen": sorted(seen.get(aid, ()))}
    except Exception as exc:  # internal API: fall back on what the rows showed
        log.debug("actor table unavailable: %s", exc)
    for aid, pids in seen.items():
        if len(pids) > 1 and aid not in out:
            out[aid] = {"actor_id": aid, "restarts": len(pids) - 1, "pids_seen": sorted(pids)}
    return list(out.values())


#: worker exit types that mean a process died without being asked to (Ray's WorkerExitType)
_UNEXPECTED_EXITS = ("SYSTEM_ERROR", "NODE_OUT_OF_MEMORY")


def _dead_workers(ray: ModuleType, since_ms: int, settle_s: float = 5.0
                  ) -> list[dict[str, Any]]:
    """Worker processes of this job that died unexpectedly (killed, crashed, out of memory)
    after ``since_ms``, from Ray's worker table (GCS; private API).

    Unlike the actor table this records every death, whether or not Ray restarted the actor
    before the run ended.  A local worker whose process is gone but which the table still
    shows alive (the raylet reports a death within ~100 ms) makes it read again, up to
    ``settle_s``."""
    import importlib

    from ray._private import state as ray_state

    # generated protobuf modules (no type information)
    common_pb2: Any = importlib.import_module("ray.core.generated.common_pb2")
    gcs_pb2: Any = importlib.import_module("ray.core.generated.gcs_pb2")
    job = str(ray.get_runtime_context().get_job_id())

    def read() -> list[Any]:
        return [gcs_pb2.WorkerTableData.FromString(raw) for raw in
                ray_state.state._connect_and_get_accessor().get_worker_table()]

    def lagging(rows: list[Any]) -> bool:
        return any(w.is_alive and w.pid > 0 and w.start_time_ms >= since_ms
                   and w.worker_type == common_pb2.WORKER and not _pid_alive(w.pid)
                   for w in rows)

    rows = _settled(read, lagging, settle_s)
    out = []
    for w in rows:
        exit_type = common_pb2.WorkerExitType.Name(w.exit_type)
        if (not w.is_alive and w.job_id.hex() == job and w.end_time_ms >= since_ms
                and exit_type in _UNEXPECTED_EXITS):
            out.append({"pid": int(w.pid), "exit_type": exit_type,
                        "exit_detail": w.exit_detail[:200],
                        "node_ip": w.worker_address.ip_address})
    return sorted(out, key=lambda d: (d["node_ip"], d["pid"]))


def run_ray(factory: sessionmaker[Session], uids: Sequence[str], ctx: RunContext,
            cfg: RayConfig, *, joblog: JobLog | None = None,
            on_row: Callable[[dict[str, Any]], None] | None = None) -> RayRun:
    """Process the due studies among ``uids`` on Ray; returns the rows and the job log."""
    jl = joblog or JobLog()
    t0 = time.monotonic()
    sess = connect(cfg)
    ray = sess.ray
    try:
        startup = time.monotonic() - t0
        res = ray.cluster_resources()
        cluster = {"nodes": len([n for n in ray.nodes() if n.get("Alive")]),
                   "cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0),
                   "address": cfg.address or "local"}
        jl.emit("ray_ready", startup_s=round(startup, 3), **cluster,
                actors=cfg.actors, batch_size=cfg.batch_size, gpus_per_actor=cfg.gpus_per_actor)
        _check_fits(cfg, cluster)
        dctx = ray.data.DataContext.get_current()
        dctx.enable_progress_bars = False
        dctx.print_on_execution_start = False
        rows: list[dict[str, Any]] = []
        seen: dict[str, set[int]] = {}
        t1 = time.monotonic()
        since_ms = int(time.time() * 1000) - 1000
        first_row: float | None = None
        for rnd in range(cfg.max_rounds):
            due = _due(factory, uids)
            if not due:
                break
            jl.emit("round", round=rnd + 1, due=len(due))
            for r in _stream(ray, due, ctx, cfg):
                if first_row is None:
                    first_row = time.monotonic() - t1
                rows.append(r)
                seen.setdefault(r["actor_id"], set()).add(int(r["pid"]))
                if r["state"] not in (DONE, "not_due"):
                    jl.emit("study_" + ("lost" if r["state"] == "lost" else "not_done"),
                            logging.WARNING, study_uid=r["study_uid"], state=r["state"],
                            reason=r["reason"][:300])
                if on_row is not None:
                    on_row(r)
        process = time.monotonic() - t1
        for a in _restarted_actors(ray, seen, since_ms):
            if a.get("restarts"):
                jl.emit("actor_restarted", logging.WARNING, **a,
                        detail="an actor process died; Ray restarted it and retried its batch")
            else:
                jl.emit("actor_replaced", logging.WARNING, **a,
                        detail="an actor process died; Ray Data replaced the actor and "
                        "retried its batch")
        try:
            dead = _dead_workers(ray, since_ms)
        except Exception as exc:  # internal API: the actor events above still stand
            log.debug("worker table unavailable: %s", exc)
            dead = []
        actor_of = {(r["node_id"], int(r["pid"])): r["actor_id"] for r in rows}
        ip_of = {str(n.get("NodeID")): str(n.get("NodeManagerAddress")) for n in ray.nodes()}
        by_ip_pid = {(ip_of.get(node, ""), pid): aid for (node, pid), aid in actor_of.items()}
        for d in dead:
            jl.emit("worker_died", logging.WARNING, **d,
                    actor_id=by_ip_pid.get((d["node_ip"], d["pid"]), ""),
                    detail="a Ray worker process of this run died; its task or batch was "
                    "retried elsewhere")
        return RayRun(rows=rows, log=jl, startup_s=startup, process_s=process,
                      cluster=cluster, first_row_s=first_row)
    finally:
        disconnect(sess)


def _check_fits(cfg: RayConfig, cluster: dict[str, Any]) -> None:
    """Refuse a configuration that could never run: actors taking every CPU leave none to
    decode (the run would wait forever), or more GPUs asked for than the cluster has."""
    cpus, gpus = float(cluster["cpus"]), float(cluster["gpus"])
    if cpus - cfg.actors * cfg.cpus_per_actor < cfg.cpus_per_task:
        raise UsageError(f"{cfg.actors} actors x {cfg.cpus_per_actor:g} CPUs leave less than "
                         f"{cfg.cpus_per_task:g} of the cluster's {cpus:g} CPUs to decode "
                         "studies; lower --actors or --cpus-per-actor, or add nodes")
    if cfg.actors * cfg.gpus_per_actor > gpus:
        raise UsageError(f"{cfg.actors} actors x {cfg.gpus_per_actor:g} GPUs exceed the "
                         f"cluster's {gpus:g} GPUs; lower --actors or --gpus-per-actor")


def _stream(ray: ModuleType, due: list[dict[str, str]], ctx: RunContext, cfg: RayConfig
            ) -> Iterator[dict[str, Any]]:
    ds = ray.data.from_items(due, override_num_blocks=max(1, min(len(due), 1000)))
    # The CPU stage reserves memory for decoding and the actors do not: their remote
    # arguments differ, which also keeps Ray Data from fusing the CPU stage into the actors
    # (decoding stays in parallel tasks).  Ray Data restarts a dead actor and retries its
    # batch, and retries a task whose worker died.
    ds = ds.map(prepare_row, fn_kwargs={"ctx": ctx}, num_cpus=cfg.cpus_per_task,
                memory=cfg.task_memory_mb << 20)
    ds = ds.map_batches(DraftActor, fn_constructor_kwargs={"ctx": ctx,
                                                           "gpus": cfg.gpus_per_actor},
                        batch_size=cfg.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
                        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None)
    for r in ds.iter_rows():
        yield {"study_uid": str(r["study_uid"]), "state": str(r["state"]),
               "reason": str(r["reason"]), "report_id": int(r["report_id"]),
               "pid": int(r["pid"]), "actor_id": str(r["actor_id"]),
               "node_id": str(r["node_id"]), "reconstructed": bool(r["reconstructed"]),
               "work_s": float(r["work_s"])}


__all__ = ["RAY_INSTALL", "DraftActor", "JobLog", "RayConfig", "RayRun", "RunContext",
           "connect", "disconnect", "make_context", "prepare_row", "require_ray", "run_ray"]
