"""Workers: claim jobs from the durable queue and run them in separate processes.

`run_job(job_id, settings)` is the whole contract of a job: given the worker's settings
(`JobSettings`, built once from the configuration) it reads everything it needs through the
store, so a job could run in another process or on another machine. Each worker thread holds
the job's lease and renews it by heartbeat while a process of the pool does the work; if the
node dies, the lease expires and the job is claimed again after restart.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from hccnode import log
from hccnode.config import Config, PriorsSection
from hccnode.store import jobs
from hccnode.store.db import Store
from hccnode.store.jobs import NOT_APPLICABLE


@dataclass(frozen=True)
class JobSettings:
    """What a job takes from the worker's configuration, built once per worker pool (`of`) and
    handed to each job's process (picklable). `destinations`: the forward destinations the outputs
    are queued for; `rules_file`: a site's phase rules (empty: the packaged ones); `adc_units`: the
    site's ADC units per Manufacturer ([adc] units); `baseline_tolerance_days`: the site's margin
    around paper 003's baseline interval ([priors] tolerance_days); `store_url`: the [store] url
    (empty: SQLite in `data_dir`)."""

    data_dir: str
    store_url: str = ""
    destinations: tuple[str, ...] = ()
    rules_file: str = ""
    adc_units: dict[str, str] = field(default_factory=dict)
    baseline_tolerance_days: float = PriorsSection.tolerance_days

    @classmethod
    def of(cls, cfg: Config) -> "JobSettings":
        return cls(str(cfg.data_dir), cfg.store.url, tuple(cfg.forward.destinations), cfg.phases.rules_file,
                   dict(cfg.adc.units), cfg.priors.tolerance_days)


def run_job(job_id: int, settings: JobSettings) -> dict:
    """Run job `job_id`: read it from the store (hccnode.store.jobs), analyse its study
    (hccnode.pipeline, which reads the study through hccnode.store) and return the result record.
    A study the analysis does not apply to gives a record with its reason under "not_applicable"."""
    from hccnode.imaging.phase_rules import load_rules
    from hccnode.pipeline import NotApplicable, analyze_study
    from hccnode.pipeline.mr import site_adc_units

    store = Store(settings.data_dir, url=settings.store_url)
    try:
        job = jobs.load(store, job_id)
        if job is None:
            raise LookupError(f"no job {job_id}")
        try:
            with site_adc_units(settings.adc_units):
                analysis = analyze_study(store, job.study_uid, destinations=settings.destinations, job_id=job_id,
                                         rules=load_rules(settings.rules_file or None),
                                         baseline_tolerance_days=settings.baseline_tolerance_days)
        except NotApplicable as exc:
            return {"study_uid": job.study_uid, "study_seq": job.study_seq, NOT_APPLICABLE: str(exc)}
        return {**analysis.as_record(), "study_seq": job.study_seq}
    finally:
        store.close()


def _process_started(nice: int, level: str, file: str) -> None:
    """An analysis process's set-up: its nice value raised by `nice` ([worker] nice), so that the
    node's receivers and senders come first on a busy host; logging as the node's."""
    os.nice(nice)
    log.setup(level, file)


def _warm_up() -> None:
    """Import the analysis modules and read highdicom's tables now, not in the first study after a
    start; `worker.warm` says when an analysis process is done with it (it takes a few seconds of
    a processor, at the analysis processes' nice value)."""
    started = time.monotonic()
    import hccnode.pipeline.driver  # noqa: F401 - the analysis modules (SimpleITK, highdicom, matplotlib)

    # highdicom reads its tables of the standard's modules (a large JSON file) on the first SEG
    # it builds: half a second of the first study after a start, unless read here. A private
    # function, so only tried: a highdicom without it reads the tables when first needed.
    try:
        from highdicom._standard_utils import get_module_attribute_map

        get_module_attribute_map()
    except (ImportError, AttributeError):
        pass
    log.event("worker.warm", pid=os.getpid(), seconds=round(time.monotonic() - started, 1))


class WorkerPool:
    """`n` worker threads sharing a process pool of the same size."""

    def __init__(self, cfg: Config, stop: threading.Event):
        self.cfg = cfg
        self.stop = stop
        self.n = cfg.worker_processes()
        self.settings = JobSettings.of(cfg)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(i,), name=f"worker-{i}", daemon=True)
                        for i in range(self.n)]

    def start(self) -> None:
        # Start the worker processes now (imports included), not when the first study is waiting.
        for _ in range(self.n):
            self._executor().submit(_warm_up)
        for t in self.threads:
            t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            t.join(timeout)
        with self._pool_lock:
            if self._pool:
                self._pool.shutdown(wait=False, cancel_futures=True)

    def _executor(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                # spawn: the node has many threads; forking them is unsafe.
                # The workers log as the node does (a spawned process starts unconfigured).
                self._pool = ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_process_started,
                                                 initargs=(self.cfg.worker.nice, self.cfg.log.level, self.cfg.log.file))
            return self._pool

    def _reset_pool(self) -> None:
        with self._pool_lock:
            if self._pool:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _loop(self, index: int) -> None:
        store = Store.of(self.cfg)
        owner = jobs.worker_owner(index)
        wcfg = self.cfg.worker
        while not self.stop.is_set():
            try:
                job = jobs.claim(store, owner, wcfg.lease_seconds)
            except Exception:
                log.event("worker.error", level=logging.ERROR, exc_info=True)
                job = None
            if job is None:
                self.stop.wait(wcfg.poll_seconds)
                continue
            try:
                self._run(store, job, owner)
            except Exception:  # e.g. the index is full when recording the outcome: the lease
                log.event("worker.error", level=logging.ERROR, job=job.id, exc_info=True)  # expires, the job reruns
                self.stop.wait(wcfg.poll_seconds)
        store.close()

    def _fetch_prior(self, store: Store, job: jobs.Job) -> None:
        """Bring an MR follow-up's baseline (paper 003) from the PACS into the store before the
        analysis pairs them. Done here, in the node process, because a C-MOVE delivers to the
        node's own SCP; a PACS that cannot help only leaves the pairing out (recorded in the audit)."""
        from hccnode.net import priors

        try:
            result = priors.fetch_baseline(self.cfg, store, job.study_uid)
        except Exception:
            log.event("job.prior_failed", level=logging.WARNING, job=job.id, study=job.study_uid, exc_info=True)
            return
        if result.state != "skipped":
            log.event("job.prior", job=job.id, study=job.study_uid, state=result.state, baseline=result.baseline_uid)

    def _held_until(self, store: Store, job: jobs.Job, owner: str, done) -> bool:
        """Renew the job's lease until `done(seconds)` (waits up to `seconds`) says True. False when
        the node is stopping (the lease is left to expire; the job resumes after restart) or the
        lease was lost."""
        interval = max(0.5, self.cfg.worker.lease_seconds / 3)
        while not done(interval):
            if self.stop.is_set():
                return False
            if not jobs.heartbeat(store, job.id, owner, self.cfg.worker.lease_seconds):
                log.event("job.lease_lost", level=logging.WARNING, job=job.id)
                return False
        return True

    def _run(self, store: Store, job: jobs.Job, owner: str) -> None:
        if self.cfg.priors.enabled:  # a C-MOVE may outlast the lease: keep it while waiting
            fetch = threading.Thread(target=self._fetch_prior, args=(store, job), name=f"prior-{job.id}", daemon=True)
            fetch.start()
            if not self._held_until(store, job, owner, lambda s: fetch.join(s) or not fetch.is_alive()):
                return
        try:
            future = self._executor().submit(run_job, job.id, self.settings)
            if not self._held_until(store, job, owner, lambda s: bool(wait([future], timeout=s).done)):
                return
            result = future.result()
        except BrokenProcessPool:
            self._reset_pool()
            jobs.fail(store, job.id, owner, "worker process died")
            return
        except Exception as exc:  # the job's error is shown to users: the problem, not the exception's type
            log.event("job.error", level=logging.WARNING, job=job.id, error=type(exc).__name__)
            jobs.fail(store, job.id, owner, str(exc) or "internal error in the analysis")
            return
        if NOT_APPLICABLE in result:
            jobs.not_applicable(store, job.id, owner, result)
        else:
            jobs.complete(store, job.id, owner, result)


class Watcher(threading.Thread):
    """Turns studies that have been quiet for `stable_seconds` into jobs."""

    def __init__(self, cfg: Config, stop: threading.Event, period: float = 1.0):
        super().__init__(name="watcher", daemon=True)
        # A tenth of the stable delay (one indexed query each time): a study is queued at most 10 %
        # later than it became stable.
        self.cfg, self.stop, self.period = cfg, stop, min(period, max(0.1, cfg.study.stable_seconds / 10))

    def run(self) -> None:
        store = Store.of(self.cfg)
        while not self.stop.is_set():
            try:
                jobs.queue_stable_studies(store, self.cfg.study.stable_seconds, self.cfg.worker.max_attempts)
            except Exception:
                log.event("watcher.error", level=logging.ERROR, exc_info=True)
            self.stop.wait(self.period)
        store.close()
