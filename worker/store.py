"""The job store: runs, their stages, progress events, metrics, artifacts and workers (SQLAlchemy 2).

SQLite by default (WAL journal and a busy timeout, so a worker and the dashboard can write at the
same time), Postgres through `DATABASE_URL`. The schema is created on open and missing columns are
added, so an older store keeps working after an upgrade. Processes that start at the same moment
(workers, the dashboard) do that under one lock (a Postgres advisory lock; for SQLite a file lock
beside the database), so none sees a half-created schema or fails with "table already exists".
Why not Alembic: the schema only ever grows by tables and nullable columns, which this does from
the models themselves; Alembic would add a revision script per change for the same result.

A store that cannot be reached is a `StoreUnavailable` (a BpnetError): one line, password masked.

Status vocabulary
- run: queued -> running -> completed | failed | cancelled
- stage: pending (waits for its parent or for the same computation in another run) -> queued ->
  running -> completed; or cached (an identical stage already completed; its outputs are reused),
  failed, cancelled, skipped (an ancestor failed).
Times are UNIX seconds (floats), identical on SQLite and Postgres.
"""

import contextlib
import fcntl
import json
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import (Float, ForeignKey, Integer, String, Text, create_engine, event, func,
                        inspect, select, text, update)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from bpnet.errors import BpnetError
from worker.config import mask_secrets, mask_url, normalize_database_url

RUN_ACTIVE = ("queued", "running")
RUN_FINAL = ("completed", "failed", "cancelled")
STAGE_DONE = ("completed", "cached")
STAGE_FINAL = ("completed", "cached", "failed", "cancelled", "skipped")


class StoreUnavailable(BpnetError):
    """The job store cannot be reached or opened (the message names the masked URL)."""


CHECK_HINT = ". Is BPNET_STUDIO_HOME / DATABASE_URL right, and the database running?"


def new_id():
    return uuid.uuid4().hex[:12]


# Stage kinds whose result is a Compare row: an evaluation, or one point of an explorer run.
RESULT_KINDS = ("evaluate", "explore_point")


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    dataset: Mapped[str] = mapped_column(String(500), default="", index=True)
    spec_json: Mapped[str] = mapped_column(Text)
    rerun_of: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Stage(Base):
    __tablename__ = "stages"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)            # position in the run's topological order
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    key: Mapped[str] = mapped_column(String(64), index=True)   # content-addressed cache key
    kind: Mapped[str] = mapped_column(String(16))        # train | prune | retrain | export | evaluate
    label: Mapped[str] = mapped_column(String(200))
    params_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    queue: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source_stage_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # cache hit
    artifact_dir: Mapped[str | None] = mapped_column(String(500), nullable=True)  # rel. to root
    outputs_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    queued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)   # last (re)send by recovery
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    stage_id: Mapped[str] = mapped_column(String(32), index=True)
    time: Mapped[float] = mapped_column(Float)
    verb: Mapped[str] = mapped_column(String(32), default="")
    event: Mapped[str] = mapped_column(String(32), default="")
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    data_json: Mapped[str] = mapped_column(Text, default="{}")


class Metric(Base):
    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    stage_id: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    __tablename__ = "artifacts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    stage_id: Mapped[str] = mapped_column(String(32), index=True)   # the stage that produced it
    key: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    relpath: Mapped[str] = mapped_column(String(500))   # relative to the artifact root
    kind: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)   # celery hostname
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    # comma-separated in the table only: `Store.workers()` and `register_worker` take and give lists
    queues: Mapped[str] = mapped_column(String(200))
    capabilities_json: Mapped[str] = mapped_column(Text, default="{}")
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="online")   # online | offline
    current_stage_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Computation(Base):
    """Which stage computes a cache key: the primary key makes "one computation per key" atomic
    however many runs and workers advance at once."""
    __tablename__ = "computations"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage_id: Mapped[str] = mapped_column(String(32))
    claimed_at: Mapped[float] = mapped_column(Float)


def row_dict(obj):
    """A mapped row as a plain dict; `*_json` columns are decoded (key without the suffix)."""
    out = {}
    for col in obj.__table__.columns:
        value = getattr(obj, col.key)
        if col.key.endswith("_json"):
            out[col.key[:-5]] = json.loads(value) if value else None
        else:
            out[col.key] = value
    return out


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    # WAL lets the dashboard read while a worker writes; the busy timeout makes concurrent
    # writers wait instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def sqlite_path(database_url):
    """The file of a SQLite URL, or None (in-memory, or not SQLite)."""
    if not database_url.startswith("sqlite"):
        return None
    path = database_url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def make_engine(database_url):
    database_url = normalize_database_url(database_url)
    try:
        if database_url.startswith("sqlite"):
            path = sqlite_path(database_url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(database_url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(database_url, pool_pre_ping=True, connect_args=_connect_timeout(database_url))
    except (SQLAlchemyError, ImportError, ValueError, OSError) as err:
        raise StoreUnavailable(f"the job store at {mask_url(database_url)} cannot be read: "
                               f"{_one_line(err, database_url)}{CHECK_HINT}") from None
    event.listen(engine, "handle_error", lambda ctx: _unreachable(ctx, database_url))
    return engine


def _connect_timeout(database_url):
    # A dead Postgres host should fail in seconds, not after the OS TCP timeout (minutes).
    return {"connect_timeout": 10} if database_url.startswith("postgresql+psycopg2") else {}


def _unreachable(ctx, database_url):
    """SQLAlchemy error hook: a lost or refused connection becomes one readable line."""
    if ctx.is_disconnect or ctx.connection is None:
        raise StoreUnavailable(f"the job store at {mask_url(database_url)} cannot be read (unreachable: "
                               f"{_one_line(ctx.original_exception, database_url)}){CHECK_HINT}") from None


def _one_line(err, database_url):
    message = str(getattr(err, "orig", None) or err).strip().splitlines()
    return mask_secrets(message[0] if message else type(err).__name__, [database_url])


@contextlib.contextmanager
def schema_lock(engine, database_url):
    """One process at a time creates or upgrades the schema (others wait, then find it done)."""
    path = sqlite_path(database_url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            # Transaction-scoped: released at commit, also if this process dies.
            conn.execute(text("SELECT pg_advisory_xact_lock(4242013)"))
            yield conn
    elif path is not None:
        try:
            lock_file = open(path.with_name(path.name + ".schema-lock"), "a")
        except OSError:   # a read-only folder: nobody can create the schema there anyway
            lock_file = contextlib.nullcontext()
        with lock_file:
            if hasattr(lock_file, "fileno"):
                fcntl.flock(lock_file, fcntl.LOCK_EX)   # released on close or when the process dies
            with engine.begin() as conn:
                yield conn
    else:
        with engine.begin() as conn:
            yield conn


def migrate(engine, database_url=""):
    """Create missing tables and add missing (nullable or defaulted) columns of existing ones,
    under the schema lock."""
    with schema_lock(engine, database_url) as conn:
        Base.metadata.create_all(conn)
        inspector = inspect(conn)
        for table in Base.metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for col in table.columns:
                if col.name in present:
                    continue
                ddl_type = col.type.compile(engine.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN {col.name} {ddl_type}'))


class Store:
    """All reads and writes of the job store. Methods return plain dicts, never ORM objects."""

    def __init__(self, database_url):
        self.database_url = database_url
        self.engine = make_engine(database_url)
        try:
            migrate(self.engine, database_url)
        except StoreUnavailable:
            self.engine.dispose()
            raise
        except (DBAPIError, SQLAlchemyError) as err:
            self.engine.dispose()
            raise StoreUnavailable(f"the job store at {mask_url(database_url)} cannot be read: "
                                   f"{_one_line(err, database_url)}{CHECK_HINT}") from None
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self):
        self.engine.dispose()

    # ------------------------------------------------------------ runs
    def create_run(self, name, dataset, spec, stages, rerun_of=None):
        """Insert a run and its stages (dicts with kind, label, params, key, parent index)."""
        now = time.time()
        run_id = new_id()
        stage_ids = [new_id() for _ in stages]
        with self.Session.begin() as s:
            s.add(Run(id=run_id, name=name, status="queued", dataset=dataset,
                      spec_json=json.dumps(spec), created_at=now, rerun_of=rerun_of))
            s.flush()
            for seq, (sid, st) in enumerate(zip(stage_ids, stages)):
                parent = st.get("parent")
                s.add(Stage(id=sid, run_id=run_id, seq=seq, key=st["key"], kind=st["kind"],
                            label=st["label"], params_json=json.dumps(st["params"]),
                            parent_id=stage_ids[parent] if parent is not None else None,
                            status="pending", created_at=now))
        return run_id

    def get_run(self, run_id):
        with self.Session() as s:
            run = s.get(Run, run_id)
            return row_dict(run) if run else None

    def list_runs(self, status=None, dataset=None, search=None, limit=200, offset=0):
        """Runs, newest first, with stage counts and overall progress (without their spec)."""
        columns = [c for c in Run.__table__.columns if c.key != "spec_json"]
        with self.Session() as s:
            q = select(*columns).order_by(Run.created_at.desc())
            if status:
                q = q.where(Run.status.in_([status] if isinstance(status, str) else list(status)))
            if dataset:
                q = q.where(Run.dataset == dataset)
            if search:
                q = q.where(Run.name.contains(search))
            runs = [dict(row._mapping) for row in s.execute(q.limit(limit).offset(offset))]
            ids = [r["id"] for r in runs]
            counts, current = {}, {}
            if ids:
                rows = s.execute(select(Stage.run_id, Stage.status, func.count(), func.sum(Stage.fraction))
                                 .where(Stage.run_id.in_(ids)).group_by(Stage.run_id, Stage.status))
                for run_id, status_, n, frac in rows:
                    counts.setdefault(run_id, {})[status_] = (n, frac or 0.0)
                current = {run_id: (label, eta) for run_id, label, eta in s.execute(
                    select(Stage.run_id, Stage.label, Stage.eta_s)
                    .where(Stage.run_id.in_(ids), Stage.status == "running"))}
        for r in runs:
            by_status = counts.get(r["id"], {})
            total = sum(n for n, _ in by_status.values())
            done = sum(n for st, (n, _) in by_status.items() if st in STAGE_FINAL)
            running_frac = by_status.get("running", (0, 0.0))[1]
            r["stage_counts"] = {k: n for k, (n, _) in by_status.items()}
            r["num_stages"] = total
            r["progress"] = (done + running_frac) / total if total else 0.0
            r["current_stage"], r["stage_eta_s"] = current.get(r["id"], (None, None))
        return runs

    def count_runs(self, status=None):
        with self.Session() as s:
            q = select(func.count()).select_from(Run)
            if status:
                q = q.where(Run.status == status)
            return s.scalar(q)

    def datasets(self):
        with self.Session() as s:
            return sorted(d for d in s.scalars(select(Run.dataset).distinct()) if d)

    def set_run_status(self, run_id, status, error=None, only_from=None):
        """Set a run's status (and start/finish time); with `only_from`, only from those states."""
        now = time.time()
        values = {"status": status}
        if status == "running":
            values["started_at"] = func.coalesce(Run.started_at, now)
        if status in RUN_FINAL:
            values["finished_at"] = now
        if error is not None:
            values["error"] = error
        with self.Session.begin() as s:
            q = update(Run).where(Run.id == run_id).values(**values)
            if only_from:
                q = q.where(Run.status.in_(only_from))
            return s.execute(q).rowcount == 1

    def active_run_ids(self):
        with self.Session() as s:
            return list(s.scalars(select(Run.id).where(Run.status.in_(RUN_ACTIVE))))

    def run_status(self, run_id):
        with self.Session() as s:
            return s.scalar(select(Run.status).where(Run.id == run_id))

    # ------------------------------------------------------------ stages
    def stages(self, run_id):
        with self.Session() as s:
            q = select(Stage).where(Stage.run_id == run_id).order_by(Stage.seq)
            return [row_dict(st) for st in s.scalars(q)]

    def stage(self, stage_id):
        with self.Session() as s:
            st = s.get(Stage, stage_id)
            return row_dict(st) if st else None

    def update_stage(self, stage_id, only_from=None, **values):
        """Update a stage's columns; with `only_from`, only if its status is one of those.
        Returns True when the row changed (a compare-and-set for status transitions)."""
        for key in ("params", "outputs", "result"):
            if key in values:
                values[f"{key}_json"] = json.dumps(values.pop(key))
        with self.Session.begin() as s:
            q = update(Stage).where(Stage.id == stage_id).values(**values)
            if only_from:
                q = q.where(Stage.status.in_(only_from))
            return s.execute(q).rowcount == 1

    def claim_stage(self, stage_id, attempt, worker_id):
        """Atomically move a queued stage to running for this delivery; False for a stale or
        duplicate message (another attempt, or the stage already ran), which must be dropped."""
        now = time.time()
        with self.Session.begin() as s:
            q = (update(Stage)
                 .where(Stage.id == stage_id, Stage.status == "queued", Stage.attempts == attempt)
                 .values(status="running", worker_id=worker_id, started_at=now, fraction=0.0,
                         error=None, traceback=None))
            return s.execute(q).rowcount == 1

    def completed_stage_with_key(self, key, exclude_id=None):
        """The earliest stage that computed `key` itself (not a cache hit), or None."""
        with self.Session() as s:
            q = (select(Stage).where(Stage.key == key, Stage.status == "completed")
                 .order_by(Stage.finished_at))
            if exclude_id:
                q = q.where(Stage.id != exclude_id)
            st = s.scalars(q.limit(1)).first()
            return row_dict(st) if st else None

    def claim_key(self, key, stage_id):
        """Make `stage_id` the one stage that computes `key`; False while another stage owns it
        and is not final. A final owner (failed, cancelled, or completed but its files deleted)
        is taken over by compare-and-set, so of N runs advancing at once exactly one wins."""
        now = time.time()
        try:
            with self.Session.begin() as s:
                s.add(Computation(key=key, stage_id=stage_id, claimed_at=now))
            return True
        except IntegrityError:
            pass
        with self.Session.begin() as s:
            owner = s.scalar(select(Computation.stage_id).where(Computation.key == key))
            if owner == stage_id:
                return True
            owner_status = s.scalar(select(Stage.status).where(Stage.id == owner))
            if owner_status not in (None, *STAGE_FINAL):
                return False
            q = (update(Computation).where(Computation.key == key, Computation.stage_id == owner)
                 .values(stage_id=stage_id, claimed_at=now))
            return s.execute(q).rowcount == 1

    def mark_sent(self, stage_id, not_since):
        """Compare-and-set of a queued stage's `sent_at`: True for the one caller that may resend
        its message now (nobody sent it since `not_since`)."""
        with self.Session.begin() as s:
            q = (update(Stage).where(Stage.id == stage_id, Stage.status == "queued",
                                     func.coalesce(Stage.sent_at, Stage.queued_at, 0.0) < not_since)
                 .values(sent_at=time.time()))
            return s.execute(q).rowcount == 1

    def stages_with_key(self, key):
        """The stages of every run that compute `key` themselves (not cache hits), newest first:
        whether a computation is done, under way or failed, whichever run asked for it."""
        with self.Session() as s:
            q = select(Stage).where(Stage.key == key, Stage.status != "cached").order_by(Stage.created_at.desc())
            return [row_dict(st) for st in s.scalars(q)]

    def runs_waiting_on_key(self, key):
        """Active runs with a pending stage of this key (they were waiting for it elsewhere)."""
        with self.Session() as s:
            q = (select(Stage.run_id).join(Run, Run.id == Stage.run_id)
                 .where(Stage.key == key, Stage.status == "pending", Run.status.in_(RUN_ACTIVE))
                 .distinct())
            return list(s.scalars(q))

    def stages_by_status(self, statuses, older_than=None):
        with self.Session() as s:
            q = select(Stage).where(Stage.status.in_(statuses))
            if older_than is not None:
                q = q.where(func.coalesce(Stage.queued_at, Stage.created_at) < older_than)
            return [row_dict(st) for st in s.scalars(q)]

    def stage_history(self, limit=500):
        """Completed stages computed here, newest first: kind, queue (the worker kind it ran on),
        params, result, duration_s - the data of the cost preview."""
        with self.Session() as s:
            q = (select(Stage.kind, Stage.queue, Stage.params_json, Stage.result_json, Stage.duration_s)
                 .where(Stage.status == "completed", Stage.duration_s.is_not(None))
                 .order_by(Stage.finished_at.desc()).limit(limit))
            return [{"kind": k, "queue": queue or "cpu", "params": json.loads(p),
                     "result": json.loads(r) if r else None, "duration_s": d}
                    for k, queue, p, r, d in s.execute(q)]

    def keys_computed(self, keys):
        """The subset of cache keys that some stage has completed."""
        keys = list(keys)
        if not keys:
            return set()
        with self.Session() as s:
            q = select(Stage.key).where(Stage.key.in_(keys), Stage.status == "completed").distinct()
            return set(s.scalars(q))

    # ------------------------------------------------------------ events, metrics, artifacts
    def add_event(self, run_id, stage_id, ev):
        fields = {k: v for k, v in ev.items() if k not in ("stage", "event", "time")}
        row = Event(run_id=run_id, stage_id=stage_id, time=ev.get("time") or time.time(),
                    verb=str(ev.get("stage", "")), event=str(ev.get("event", "")),
                    epoch=_opt_int(ev.get("epoch")), step=_opt_int(ev.get("step")),
                    loss=_opt_float(ev.get("loss")), fraction=_opt_float(ev.get("fraction")),
                    message=ev.get("message"), data_json=json.dumps(fields, default=str))
        with self.Session.begin() as s:
            s.add(row)

    def events(self, run_id=None, stage_id=None, since_id=0, limit=500, kinds=None):
        with self.Session() as s:
            q = select(Event).where(Event.id > since_id).order_by(Event.id)
            if run_id:
                q = q.where(Event.run_id == run_id)
            if stage_id:
                q = q.where(Event.stage_id == stage_id)
            if kinds:
                q = q.where(Event.event.in_(kinds))
            return [row_dict(e) for e in s.scalars(q.limit(limit))]

    def last_events(self, run_id, limit=200):
        with self.Session() as s:
            q = select(Event).where(Event.run_id == run_id).order_by(Event.id.desc()).limit(limit)
            return [row_dict(e) for e in reversed(list(s.scalars(q)))]

    def add_metrics(self, run_id, stage_id, metrics):
        with self.Session.begin() as s:
            for name, value in metrics.items():
                s.add(Metric(run_id=run_id, stage_id=stage_id, name=name, value=float(value)))

    def metrics(self, run_id):
        with self.Session() as s:
            q = select(Metric).where(Metric.run_id == run_id).order_by(Metric.id)
            return [row_dict(m) for m in s.scalars(q)]

    def add_artifacts(self, stage_id, key, entries):
        """Record manifest entries (name, relpath, kind, size, sha256); returns their ids."""
        now = time.time()
        ids = []
        with self.Session.begin() as s:
            for e in entries:
                aid = new_id()
                ids.append(aid)
                s.add(Artifact(id=aid, stage_id=stage_id, key=key, name=e["name"], relpath=e["relpath"],
                               kind=e["kind"], size=int(e["size"]), sha256=e["sha256"], created_at=now))
        return ids

    def artifacts_of_stages(self, stage_ids):
        stage_ids = list(stage_ids)
        if not stage_ids:
            return []
        with self.Session() as s:
            q = select(Artifact).where(Artifact.stage_id.in_(stage_ids)).order_by(Artifact.created_at)
            return [row_dict(a) for a in s.scalars(q)]

    def model_artifacts(self, stage_kinds, limit=200):
        """The models stages of `stage_kinds` produced (the file their outputs name as `model`,
        not checkpoints), newest first, with their run."""
        with self.Session() as s:
            q = (select(Artifact.id, Artifact.relpath, Artifact.name, Artifact.created_at, Stage.kind,
                        Stage.label, Stage.run_id, Run.name, Stage.outputs_json)
                 .join(Stage, Stage.id == Artifact.stage_id).join(Run, Run.id == Stage.run_id)
                 .where(Stage.kind.in_(list(stage_kinds)), Artifact.kind == "keras model")
                 .order_by(Artifact.created_at.desc()))
            rows = []
            for aid, rel, name, created, kind, label, run_id, run_name, outputs in s.execute(q):
                if name == json.loads(outputs or "{}").get("model"):
                    rows.append({"artifact_id": aid, "relpath": rel, "name": name, "created_at": created,
                                 "kind": kind, "stage_label": label, "run_id": run_id, "run_name": run_name})
                    if len(rows) >= limit:
                        break
            return rows

    def artifact(self, artifact_id):
        with self.Session() as s:
            a = s.get(Artifact, artifact_id)
            return row_dict(a) if a else None

    # ------------------------------------------------------------ results (Compare)
    def result_rows(self, run_ids=None):
        """Rows (stage_id, run_id, label, status, result dict, run name, dataset) of every
        evaluate stage with a result, oldest run first. Only these columns are read: Compare
        asks for thousands of them."""
        with self.Session() as s:
            q = (select(Stage.id, Stage.run_id, Stage.label, Stage.status, Stage.result_json, Run.name,
                        Run.dataset, Stage.params_json)
                 .join(Run, Run.id == Stage.run_id)
                 .where(Stage.kind.in_(RESULT_KINDS), Stage.status.in_(STAGE_DONE),
                        Stage.result_json.is_not(None))
                 .order_by(Run.created_at, Stage.seq))
            if run_ids:
                q = q.where(Stage.run_id.in_(list(run_ids)))
            return [{"stage_id": sid, "run_id": rid, "label": label, "status": status,
                     "result": json.loads(result), "run_name": name, "dataset": dataset,
                     **_evaluation_data(params)}
                    for sid, rid, label, status, result, name, dataset, params in s.execute(q)]

    def gate_rows(self, run_ids=None):
        """{evaluate stage id: gate row (stage_id, status, result)} of the runs' gate stages;
        a gate's parent is the evaluate stage of the result it checks."""
        with self.Session() as s:
            q = select(Stage.id, Stage.parent_id, Stage.status, Stage.result_json, Stage.error).where(
                Stage.kind == "gate")
            if run_ids:
                q = q.where(Stage.run_id.in_(list(run_ids)))
            return {parent: {"stage_id": sid, "status": status, "error": error,
                             "result": json.loads(result) if result else None}
                    for sid, parent, status, result, error in s.execute(q)}

    # ------------------------------------------------------------ workers
    def register_worker(self, worker_id, hostname, pid, queues, capabilities):
        """Insert (or refresh) this worker's row; returns it, read back, so a caller knows the
        registration really is in the store before it takes tasks."""
        now = time.time()
        values = dict(hostname=hostname, pid=pid, queues=",".join(queues),
                      capabilities_json=json.dumps(capabilities), started_at=now, heartbeat_at=now,
                      status="online", current_stage_id=None)
        with self.Session.begin() as s:
            if s.execute(update(Worker).where(Worker.id == worker_id).values(**values)).rowcount == 0:
                s.add(Worker(id=worker_id, **values))
        with self.Session() as s:
            w = s.get(Worker, worker_id)
            if w is None:
                raise StoreUnavailable(f"worker {worker_id}: registration is not in the job store")
            return worker_dict(w)

    def heartbeat(self, worker_id, current_stage_id=None, status="online"):
        with self.Session.begin() as s:
            s.execute(update(Worker).where(Worker.id == worker_id).values(
                heartbeat_at=time.time(), current_stage_id=current_stage_id, status=status))

    def workers(self):
        """Registered workers as dicts; `queues` is a list."""
        with self.Session() as s:
            return [worker_dict(w) for w in s.scalars(select(Worker).order_by(Worker.id))]


def worker_dict(worker):
    """A worker row as a dict, its queues as the list they were registered with."""
    row = row_dict(worker)
    row["queues"] = [q for q in (row["queues"] or "").split(",") if q]
    return row


def _evaluation_data(params_json):
    """The evaluation annotations and image folder of an evaluate stage's parameters."""
    params = json.loads(params_json) if params_json else {}
    return {"annotations": params.get("annotations"), "images": params.get("images")}


def _opt_int(v):
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def _opt_float(v):
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


_STORES = {}
_STORES_LOCK = threading.Lock()


def open_store(database_url):
    """One `Store` per URL and process (engines are pooled; creating one per call is slow)."""
    with _STORES_LOCK:
        store = _STORES.get(database_url)
        if store is None:
            store = _STORES[database_url] = Store(database_url)
        return store
