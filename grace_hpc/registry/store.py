"""The endpoint registry: one JSON file on the shared file system that many jobs update safely.

Writers take a sidecar lock (`<file>.lock`: flock, or a lock file on Lustre mounts without flock), read, change,
write a temp file in the same folder, fsync it and `os.replace` it over the registry (pipx's
`pipx_metadata_file.py` does the same), so readers never lock and never see a torn file. Before each replace the
current good file is hard-linked to `<file>.bak`; a corrupt registry is restored from it on the next write.
Everything is owner-only, and a registry that other users could write is refused rather than trusted.
"""

from __future__ import annotations

import builtins
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import filelock

from grace_hpc.config.cluster import Cluster, LockMode
from grace_hpc.config.loader import ConfigDir
from grace_hpc.errors import RegistryError, SchedulerError
from grace_hpc.registry.document import CorruptRegistryError, Document, decode, encode
from grace_hpc.registry.fs import (
    DEFAULT_RETRY,
    MISSING,
    FileStamp,
    FileSystem,
    LocalFileSystem,
    RetryPolicy,
    stamp_of,
    with_retries,
)
from grace_hpc.registry.reap import ReapReport, is_slurm_job, local_pid, plan_reap
from grace_hpc.registry.records import EndpointRecord, EndpointState, MeasuredCapacity
from grace_hpc.slurm.queue import JobInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

JobStates = Callable[[list[str]], dict[str, JobInfo]]
#: A lock that is still busy after this many waits of `lock_timeout_s` is reported, not waited on forever.
LOCK_ATTEMPTS = 3
#: filelock polls a busy lock. Measured with 32 writers on 2 cores (bench/registry_stress.py): polling every 5 ms
#: costs more CPU than the holder needs (each poll re-opens the lock file) and throughput fell from 62 to 13 ops/s.
LOCK_POLL_S = 0.05


@dataclass(frozen=True)
class RegistrySnapshot:
    version: FileStamp  # pass to `changed_since` to learn cheaply (one stat) whether to read again
    revision: int  # the file's write counter
    records: list[EndpointRecord]


def _writable_by_others(mode: int) -> bool:
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Registry:
    """The registry at `path`. Creating one touches no file; the first write creates the folder (0700)."""

    def __init__(
        self,
        path: Path,
        *,
        lock_mode: LockMode = LockMode.FLOCK,
        fs: FileSystem | None = None,
        clock: Callable[[], float] = time.time,
        lock_timeout_s: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.path = Path(path)
        self.backup_path = self.path.with_name(self.path.name + ".bak")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_mode = lock_mode
        self.fs: FileSystem = fs or LocalFileSystem()
        self.clock = clock
        self.lock_timeout_s = lock_timeout_s
        self.retry = retry
        if lock_mode is LockMode.FLOCK:
            # keep the lock file: unlinking it on release makes every waiter re-open and re-check the inode
            self._lock: filelock.BaseFileLock = filelock.FileLock(
                str(self.lock_path), timeout=lock_timeout_s, mode=0o600, poll_interval=LOCK_POLL_S,
                preserve_lock_file=True)
        else:
            self._lock = filelock.SoftFileLock(str(self.lock_path), timeout=lock_timeout_s, mode=0o600,
                                               poll_interval=LOCK_POLL_S)
        self._folder_ok = False

    @classmethod
    def from_cluster(cls, cluster: Cluster, config: ConfigDir, environ: Mapping[str, str] = os.environ) -> Registry:
        """The cluster's registry: $GRACE_REGISTRY if set, else `paths.registry` from cluster.yaml."""
        override = environ.get("GRACE_REGISTRY")
        path = Path(override).absolute() if override else config.resolve(cluster.paths.registry)
        return cls(path, lock_mode=cluster.lock_mode)

    # -- reading (no lock: the writer's atomic replace means a read sees one whole version) -----------------
    def snapshot(self) -> RegistrySnapshot:
        loaded = self._read(self.path)
        if loaded is None:
            return RegistrySnapshot(MISSING, 0, [])
        data, st = loaded
        try:
            doc = decode(data)
        except CorruptRegistryError as exc:
            raise RegistryError(
                f"{self.path}: corrupt registry: {exc}. The next registry write (e.g. `grace-hpc registry reap`) "
                f"restores the last good copy {self.backup_path.name} automatically; to start empty instead, move "
                f"{self.path} aside (running servers re-register at their next heartbeat)") from exc
        return RegistrySnapshot(stamp_of(st), doc.revision, list(doc.endpoints.values()))

    def changed_since(self, version: object) -> bool:
        """Whether the file differs from the one `version` came from: one stat, no read."""
        def stat_or_missing() -> FileStamp:
            try:
                return stamp_of(self.fs.stat(self.path))
            except FileNotFoundError:
                return MISSING
        return with_retries(self.retry, "stat the registry", self.path, stat_or_missing) != version

    def get(self, endpoint_id: str) -> EndpointRecord | None:
        return next((r for r in self.snapshot().records if r.id == endpoint_id), None)

    def list(
        self, *, model: str | None = None, state: EndpointState | None = None, category: str | None = None
    ) -> builtins.list[EndpointRecord]:
        return [
            r for r in self.snapshot().records
            if (model is None or r.model == model) and (state is None or r.state is state)
            and (category is None or category in r.categories)
        ]

    # -- writing -------------------------------------------------------------------------------------------
    def register(self, record: EndpointRecord) -> EndpointRecord:
        """Add `record`, or replace the entry with its id (a supervisor coming back after a reap)."""
        def change(endpoints: dict[str, EndpointRecord]) -> None:
            endpoints[record.id] = record
        self._update(change)
        return record

    def publish(self, records: Sequence[EndpointRecord]) -> tuple[str, ...]:
        """One job's endpoints as the job sees them, stamped alive now, in one locked write (a packed job runs
        several engines: one write per heartbeat, not one per engine). An entry that is missing is put back: it was
        reaped while the job could not write (a long file-system outage) or lost when a corrupt file was restored
        from its .bak. Returns the ids put back."""
        def change(endpoints: dict[str, EndpointRecord]) -> tuple[str, ...]:
            now = self.clock()
            missing = tuple(r.id for r in records if r.id not in endpoints)
            for r in records:
                endpoints[r.id] = r.model_copy(update={"heartbeat_at": now})
            return missing
        return self._update(change)

    def heartbeat(self, endpoint_id: str) -> None:
        """Stamp the entry alive now. RegistryError if it is not there (reaped): register it again."""
        def change(endpoints: dict[str, EndpointRecord]) -> None:
            endpoints[endpoint_id] = self._known(endpoints, endpoint_id).model_copy(
                update={"heartbeat_at": self.clock()})
        self._update(change)

    def set_state(self, endpoint_id: str, state: EndpointState, *, last_error: str | None = None) -> None:
        """Move the entry to `state` (and record why, when `last_error` is given)."""
        def change(endpoints: dict[str, EndpointRecord]) -> None:
            update: dict[str, object] = {"state": state, "heartbeat_at": self.clock()}
            if last_error is not None:
                update["last_error"] = last_error
            endpoints[endpoint_id] = self._known(endpoints, endpoint_id).model_copy(update=update)
        self._update(change)

    def set_capacity(self, endpoint_id: str, capacity: MeasuredCapacity) -> None:
        """Record what `grace-hpc bench` measured (heartbeats and state changes keep it). RegistryError if absent."""
        def change(endpoints: dict[str, EndpointRecord]) -> None:
            endpoints[endpoint_id] = self._known(endpoints, endpoint_id).model_copy(update={"capacity": capacity})
        self._update(change)

    def deregister(self, endpoint_id: str) -> bool:
        """Remove the entry; False if it was not there."""
        def change(endpoints: dict[str, EndpointRecord]) -> bool:
            return endpoints.pop(endpoint_id, None) is not None
        return self._update(change)

    def reap(self, *, job_states: JobStates | None, stale_after_s: float) -> ReapReport:
        """Remove entries whose job has ended and entries nobody can prove alive after `stale_after_s` without a
        heartbeat (see grace_hpc.registry.reap). The scheduler is asked once, outside the lock; a failed read of
        the registry raises (nothing is removed) and a failed scheduler query removes nothing by job state."""
        records = self.snapshot().records
        slurm_ids = sorted({r.job_id or "" for r in records if is_slurm_job(r)})
        jobs: dict[str, JobInfo] | None = None
        scheduler_error = None
        if job_states is not None:
            try:
                jobs = job_states(slurm_ids) if slurm_ids else {}
            except SchedulerError as exc:
                scheduler_error = str(exc)
        host = socket.gethostname()
        checked: dict[str, tuple[int, bool]] = {}  # endpoint id -> (pid, alive), for local jobs on this host
        for r in records:
            pid = local_pid(r)
            if pid is not None and r.node in (None, host):
                checked[r.id] = (pid, pid_alive(pid))

        def change(endpoints: dict[str, EndpointRecord]) -> ReapReport:
            # an entry registered again since the first read (a new pid) is not judged on the old one
            local_alive = {k: alive for k, (pid, alive) in checked.items()
                           if k in endpoints and local_pid(endpoints[k]) == pid}
            removals, stale = plan_reap(
                list(endpoints.values()), now=self.clock(), stale_after_s=stale_after_s, jobs=jobs,
                scheduler_failed=scheduler_error is not None, local_alive=local_alive)
            for removal in removals:
                gone = endpoints.pop(removal.endpoint_id)
                if removal.job_ended:
                    self._drop_key_file(gone)
            return ReapReport(tuple(removals), tuple(stale), len(endpoints), scheduler_error)
        return self._update(change)

    # -- internals -----------------------------------------------------------------------------------------
    def _known(self, endpoints: dict[str, EndpointRecord], endpoint_id: str) -> EndpointRecord:
        try:
            return endpoints[endpoint_id]
        except KeyError:
            raise RegistryError(f"endpoint {endpoint_id!r} is not in the registry {self.path} (reaped after missed "
                                "heartbeats, or removed): register it again") from None

    def _drop_key_file(self, record: EndpointRecord) -> None:
        """Delete the API key file of an ended endpoint, if it lives in this registry's own keys folder."""
        if record.api_key_file and Path(record.api_key_file).parent == self.path.parent / "keys":
            with_retries(self.retry, "remove a key file", Path(record.api_key_file),
                         lambda: self.fs.unlink(Path(record.api_key_file or "")))

    def _check_folder(self, *, create: bool) -> bool:
        """Whether the folder exists; refuses one that other users could write (they could swap the file)."""
        if self._folder_ok:
            return True
        folder = self.path.parent

        def stat_folder() -> os.stat_result | None:
            try:
                return self.fs.stat(folder)
            except FileNotFoundError:
                if not create:
                    return None
                self.fs.mkdir(folder)
                return self.fs.stat(folder)
        st = with_retries(self.retry, "open the registry folder", folder, stat_folder)
        if st is None:
            return False
        if _writable_by_others(st.st_mode):
            raise RegistryError(f"{folder}: the registry folder is writable by group or others (mode "
                                f"{stat.S_IMODE(st.st_mode):o}), so another user could replace the registry; run "
                                f"`chmod 700 {folder}` (or set GRACE_REGISTRY to a path in a private folder)")
        self._folder_ok = True
        return True

    def _read(self, path: Path) -> tuple[bytes, os.stat_result] | None:
        if not self._check_folder(create=False):
            return None

        def read() -> tuple[bytes, os.stat_result] | None:
            try:
                return self.fs.read(path)
            except FileNotFoundError:
                return None
        loaded = with_retries(self.retry, "read the registry", path, read)
        if loaded is not None and _writable_by_others(loaded[1].st_mode):
            raise RegistryError(f"{path}: writable by group or others (mode {stat.S_IMODE(loaded[1].st_mode):o}), "
                                f"so its endpoints cannot be trusted; run `chmod 600 {path}`")
        return loaded

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._check_folder(create=True)

        def acquire() -> bool:
            try:
                self._lock.acquire()
            except filelock.Timeout:  # a TimeoutError, hence an OSError: keep it away from with_retries
                return False
            return True
        for attempt in range(LOCK_ATTEMPTS):
            if with_retries(self.retry, "take the registry lock", self.lock_path, acquire):
                break
            if attempt == LOCK_ATTEMPTS - 1:
                stale = (f"; if no grace-hpc process is running, delete {self.lock_path}"
                         if self.lock_mode is LockMode.LOCKFILE else "")
                raise RegistryError(
                    f"{self.lock_path}: registry lock still held after {LOCK_ATTEMPTS} waits of "
                    f"{self.lock_timeout_s:g}s (another process is writing the registry){stale}")
            self.retry.sleep(self.retry.delay(attempt))
        try:
            yield
        finally:
            self._lock.release()

    def _load_for_write(self) -> tuple[Document, bool]:
        """(current document, whether the file on disk is good): a corrupt file is replaced by its .bak."""
        loaded = self._read(self.path)
        if loaded is None:
            return Document(0, {}), False
        try:
            return decode(loaded[0]), True
        except CorruptRegistryError as exc:
            problem = str(exc)
        backup = self._read(self.backup_path)
        try:
            if backup is None:
                raise CorruptRegistryError(f"{self.backup_path} does not exist")
            doc = decode(backup[0])
        except CorruptRegistryError as exc:
            raise RegistryError(
                f"{self.path}: corrupt registry ({problem}) and no good last copy to restore ({exc}); move "
                f"{self.path} aside to start an empty registry (running servers re-register at their next "
                "heartbeat)") from exc
        aside = self.path.with_name(self.path.name + ".corrupt")
        with_retries(self.retry, "move the corrupt registry aside", self.path,
                     lambda: self.fs.replace(self.path, aside))
        log.warning("%s was corrupt (%s): restored %d endpoint(s) from %s (revision %d); the corrupt file is kept as "
                    "%s", self.path, problem, len(doc.endpoints), self.backup_path.name, doc.revision, aside.name)
        return doc, False

    def _update(self, change: Callable[[dict[str, EndpointRecord]], T]) -> T:
        with self._locked():
            doc, on_disk_good = self._load_for_write()
            endpoints = dict(doc.endpoints)
            result = change(endpoints)
            # a registry restored from its .bak is written back even when the change itself was a no-op
            if endpoints != doc.endpoints or (not on_disk_good and endpoints):
                self._write(encode(endpoints, doc.revision + 1), keep_backup=on_disk_good)
            return result

    def _write(self, data: bytes, *, keep_backup: bool) -> None:
        folder = self.path.parent
        if keep_backup:
            self._backup()
        tmp = with_retries(self.retry, "write the registry", self.path,
                           lambda: self.fs.write_temp(folder, f".{self.path.name}", data))
        try:
            self._replace(tmp, self.path)
        except BaseException:
            self.fs.unlink(tmp)
            raise
        with_retries(self.retry, "sync the registry folder", folder, lambda: self.fs.fsync_dir(folder))

    def _backup(self) -> None:
        """Point `.bak` at the current (good, fsynced) file: a hard link, so no bytes are copied."""
        tmp = self.backup_path.with_name(f".{self.backup_path.name}.{os.getpid()}.tmp")

        def link() -> None:
            self.fs.unlink(tmp)
            self.fs.link(self.path, tmp)
        try:
            with_retries(self.retry, "keep the last good copy", self.backup_path, link)
            self._replace(tmp, self.backup_path)
        except RegistryError as exc:
            self.fs.unlink(tmp)
            # file systems without hard links (EPERM/ENOTSUP): the registry still works, without its safety copy
            cause = exc.__cause__
            if not isinstance(cause, OSError) or cause.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV,
                                                                     errno.EMLINK):
                raise
            log.warning("%s: cannot keep %s (%s)", self.path, self.backup_path.name, cause.strerror)

    def _replace(self, src: Path, dst: Path) -> None:
        attempts = 0

        def replace() -> None:
            nonlocal attempts
            attempts += 1
            try:
                self.fs.replace(src, dst)
            except FileNotFoundError:
                # NFS: a rename retried after a lost reply finds its source already moved: the first one worked
                if attempts == 1 or self._exists(src):
                    raise
        with_retries(self.retry, "replace the registry", dst, replace)

    def _exists(self, path: Path) -> bool:
        try:
            self.fs.stat(path)
        except FileNotFoundError:
            return False
        return True
