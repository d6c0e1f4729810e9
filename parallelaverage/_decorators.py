"""``parallel``, ``parallel_average`` and the action decorators: the user's entry points.

A decorated function's call is looked up in the job database by its canonical key:
unknown calls are submitted (and return None), known ones return their result so far.
Action decorators (``dont_submit``, ``do_submit``, ``re_submit``, ``cancel_job``,
``print_job_output``, ``wait``) change what a call does; they stack on top of the
decorated function or wrap it in a call: ``wait(f)(x)``. Everything a job does once
it exists lives in :class:`parallelaverage.job.Job`; this module turns calls into jobs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
from typing import Any, Callable, Iterable, Mapping

import cloudpickle

from parallelaverage import _testhooks
from parallelaverage._accumulator import recorded_statistics
from parallelaverage.jobfiles.layout import Creator, JobFiles, LaunchPlan
from parallelaverage._options import JobOptions, parse_options
from parallelaverage.jobfiles.payload import Payload
from parallelaverage.jobfiles.trust import PICKLE_PROTOCOL
from parallelaverage.runspace import RunSpace
from parallelaverage._state import JobState
from parallelaverage.errors import ArgumentError, CodeChangedWarning, NoJobError, say, warn
from parallelaverage.job import Job, start_batch
from parallelaverage.jobdb import (
    JobDatabase, JobRecord, call_key, code_changes, code_fingerprint, code_hash, new_record,
)

__all__ = [
    "parallel", "parallel_average", "do_submit", "dont_submit", "re_submit", "cancel_job",
    "print_job_output", "wait", "load_job",
]

RELAUNCHED_STATUSES = ("submit_failed", "not_launched")
"""A plain call of a job in one of these states launches it again: a refused
submission (after the user fixed the option) or a caller killed mid-submission."""


class ParallelFunction:
    """A function whose calls become parallel jobs. Made by the decorators below."""

    def __init__(self, function: Callable[..., Any], options: JobOptions) -> None:
        functools.update_wrapper(self, function)
        self._function = function
        self._options = options

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("auto", args, kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # A decorated method: the instance becomes the first argument (``self``), keyed
        # by its state like any other argument: another state is another call.
        return self if instance is None else _BoundParallelFunction(self, instance)

    def __reduce__(self) -> Any:
        # Travelling to the ranks (as a class attribute of a method's instance, say), it is
        # the plain function: a run calls it, it does not submit jobs from a compute node,
        # and the modules of its options are not shipped along.
        return _plain_function, (self._function,)

    def __repr__(self) -> str:
        kind = "parallel" if self._options.average is None else "parallel_average"
        return f"<{kind} {self._function.__qualname__}, {self._options.total_runs} runs on {self._options.N_tasks} ranks>"

    # ----------------------------------------------------------------- helpers
    def _key(self, args: tuple, kwargs: dict, N_runs: Any = None) -> Any:
        average = self._options.average
        return call_key(self._function, args, kwargs, N_runs=self._options.N_runs if N_runs is None else N_runs,
                        average_results="keep" if average is None else average)

    def _database(self) -> JobDatabase:
        return JobDatabase(self._options.path)

    def _payload(self, args: tuple, kwargs: dict, seed: int) -> bytes:
        options = self._options
        payload = Payload(self._function, args, kwargs, options.average,
                          options.keep_runs or options.average is None, options.encoding, seed,
                          options.dynamic_load_balancing, statistics=options.statistics, target=options.target)
        payload.capture_sources(tuple(m.__name__ for m in options.pickle_by_value))
        for module in options.pickle_by_value:
            cloudpickle.register_pickle_by_value(module)
        try:
            return cloudpickle.dumps(payload, protocol=5)
        except Exception as error:
            raise ArgumentError(
                f"{self._function.__qualname__} or its arguments cannot be sent to the MPI ranks "
                f"({type(error).__name__}: {error}); make them picklable"
            ) from error
        finally:
            for module in options.pickle_by_value:
                cloudpickle.unregister_pickle_by_value(module)

    def _submit(self, db: JobDatabase, key: Any, args: tuple, kwargs: dict, force: bool,
                base: tuple[Job, JobState] | None = None) -> Job | None:
        """Create the call's job with its first launch folder and start it; None if
        another caller's job answers the call (``force``: a new job regardless).

        ``base``: a completed job of this call with fewer runs (:meth:`_extension_base`):
        its runs become the new job's first launch, already ended (its merged tally as
        the launch's result), and the new job runs only the other runs, with its seed.
        """
        job = self._create(db, key, args, kwargs, force, base)
        if job is None:
            return None
        options = self._options
        queuing_system = options.resolved_queuing_system()
        first = job.files.launch_numbers()[-1]
        if base is not None:
            new_runs = len(job.files.read_plan(first, job.space).positions)
            say(f"submitting job {job.name} ({new_runs} runs on {options.N_tasks} MPI ranks, "
                f"{queuing_system}); its other {len(job.space.all()) - new_runs} runs are those of job "
                f"{base[0].name}, the same call with N_runs={base[0].record.N_runs}: same seed, same streams")
        else:
            say(f"submitting job {job.name} ({options.total_runs} runs on {options.N_tasks} "
                f"MPI ranks, {queuing_system})")
        job.start(first, queuing_system, options.N_tasks, dict(options.queue_options))
        return job

    def _create(self, db: JobDatabase, key: Any, args: tuple, kwargs: dict, force: bool,
                base: tuple[Job, JobState] | None = None) -> Job | None:
        """Create the call's job with its first launch folder (not started yet); None if
        another caller's job answers the call (``force``: a new job regardless)."""
        options = self._options
        seed = options.seed if options.seed is not None else int(hashlib.sha256(key.digest.encode()).hexdigest()[:8], 16)
        if base is not None:
            seed = int(base[0].record.options["seed"])  # the old runs' streams: the same for the same run ids
        payload = self._payload(args, kwargs, seed)
        queuing_system = options.resolved_queuing_system()
        recorded = {**options.recorded(), "average": options.average, "seed": seed}
        space = options.space
        creator = json.dumps({**Creator.now(), "backend": queuing_system}).encode()
        first = 1
        files = {"payload.pkl": payload}
        if base is not None:
            old_job, old_state = base
            # its runs keep their positions in the larger space (_extension_base checks it); those it
            # did not run (it stopped at its target error) are run now, with the new ones
            old = old_state.done.union(old_state.failed_positions)
            recorded["extends"] = {"job": old_job.name, "N_runs": old_job.record.N_runs}
            files.update(_imported_launch(old_job, old_state, old, space))
            first = 2
            new_runs = space.all() - old
        else:
            new_runs = space.all()
        # the first launch exists with the job: its creator is known from the start
        files[f"attempts/{first}/creator.json"] = creator
        files[f"attempts/{first}/runs.json"] = LaunchPlan(new_runs).to_bytes(space)

        def make_record(name: str) -> JobRecord:
            return new_record(key, name, code_hash=code_hash(self._function),
                              code_parts=code_fingerprint(self._function), options=recorded,
                              status="submitted", queue=queuing_system)

        if force:
            record, created = db.create(key, make_record, files=files), True
        else:
            record, created = db.get_or_create(key, make_record, files=files)
        if not created:
            return None
        db.note_family(self._key(args, kwargs, 1).digest, record.job_name)  # for a later call with more runs
        _testhooks.hook("job_created")
        return Job(db, record)

    def map(self, calls: Iterable[Any], *, N_tasks: int | None = None) -> list[Any]:
        """Call the function with each of ``calls`` and send the calls that have no job yet
        as **one** launch: one ``mpiexec``, or one SLURM job, whose ranks share one counter
        over every call's runs — a sweep of 1,000 calls is one job for the scheduler, not
        1,000. Each call still has its own job (its own record, result, caching, actions):
        later, a plain call ``f(**call)`` returns its result.

        Args:
            calls: each a dict of keyword arguments, or a tuple of positional arguments.
            N_tasks: the ranks of the shared launch (default: the decorator's ``N_tasks``).

        Returns:
            For each call, what a plain call returns: None for a call just submitted, the
            result so far for a call that already had a job.

        Raises:
            SubmissionError: the queue refused the shared launch (each job of it then says so).
        """
        options = self._options
        db = self._database()
        created: list[Job] = []
        results: list[Any] = []
        batched: set[str] = set()  # a call given twice is one job, submitted once
        # every call is bound (and fails with its ArgumentError) before any job is made
        keyed = [(args, kwargs, self._key(args, kwargs)) for args, kwargs in (
            ((), dict(call)) if isinstance(call, Mapping) else (tuple(call), {}) for call in calls)]
        for args, kwargs, key in keyed:
            if key.digest in batched:
                results.append(None)
                continue
            job = None if db.lookup(key) is not None else self._create(db, key, args, kwargs, force=False)
            if job is not None:
                created.append(job)
                batched.add(key.digest)
                results.append(None)
            else:
                results.append(self._call("auto", args, kwargs))
        if created:
            n_tasks = options.N_tasks if N_tasks is None else N_tasks
            runs = sum(len(job.space.all()) for job in created)
            say(f"submitting {len(created)} jobs as one launch ({created[0].name} ... {created[-1].name}: {runs} runs "
                f"on {min(n_tasks, runs)} MPI ranks, {options.resolved_queuing_system()})")
            start_batch(db, created, options.resolved_queuing_system(), n_tasks, dict(options.queue_options))
        return results

    def _extension_base(self, db: JobDatabase, key: Any, args: tuple, kwargs: dict) -> tuple[Job, JobState] | None:
        """The completed job of this very call with the most runs, fewer than ``N_runs``,
        whose runs the call can keep (see docs/workflow.md, "More runs for a cached
        call"): the same function, arguments, averaged elements and statistics, code
        unchanged, its seed (the call's own seed, if one is given), outputs not kept, and
        its run ids the first ones of this call's (``N_runs`` larger, or for index tuples
        a larger first dimension). None if there is none."""
        options = self._options
        if options.average is None or options.keep_runs:
            return None  # kept outputs would have to be carried over: not (yet) done
        space = options.space
        best: tuple[Job, JobState] | None = None
        for name in db.family_jobs(self._key(args, kwargs, 1).digest):
            try:
                record = db.load(name)
                old_space = RunSpace(record.N_runs)
            except (OSError, ValueError, TypeError):
                continue
            if record.function != key.function or not _keeps_positions(old_space, space) or (
                    best is not None and old_space.total <= best[0].space.total):
                continue
            seed = record.options.get("seed")
            if (options.seed is not None and seed != options.seed) or not isinstance(seed, int) \
                    or record.options.get("statistics", []) != recorded_statistics(options.statistics) \
                    or record.options.get("keep_runs") or record.options.get("encoding", "pickle") != options.encoding:
                continue
            if record.key_digest != self._key(args, kwargs, old_space.option).digest:
                continue  # another call of the same function
            if code_changes(self._function, record.code_hash, record.code_parts):
                continue  # its runs ran other code
            job = Job(db, record)
            state = job.state()
            if state.status == "completed":
                best = (job, state)
        return best

    def _relaunch(self, job: Job, status: str) -> None:
        """Launch again a job whose submission failed or never happened."""
        options = self._options
        what = "submitting again" if status == "submit_failed" else "launching"
        job.relaunch(options.resolved_queuing_system(), options.N_tasks, dict(options.queue_options),
                     include_failed=False, what=what)

    def _existing(self, db: JobDatabase, key: Any, action: str) -> JobRecord:
        record = db.lookup(key) or db.find_unindexed(key)
        if record is None:
            closest = db.closest(key)
            hint = "; closest stored calls: " + ", ".join(r.call for r in closest) if closest else ""
            raise NoJobError(
                f"{action}: no job for {key.describe()} in {db.root}"
                f"{hint}. Call it without @{action} to submit it."
            )
        return record

    # ----------------------------------------------------------------- actions
    def _call(self, action: str, args: tuple, kwargs: dict, **action_options: Any) -> Any:
        key = self._key(args, kwargs)
        db = self._database()
        if action == "do_submit":
            self._submit(db, key, args, kwargs, force=True)
            return None
        if action in ("auto", "wait"):
            record = db.lookup(key)
            if record is None:
                base = self._extension_base(db, key, args, kwargs)
                job = self._submit(db, key, args, kwargs, force=False, base=base)
                if job is not None and action == "auto":
                    return None
                record = job.record if job is not None else db.lookup(key)
                if record is None:  # removed (cleanup) right after another caller made it
                    raise NoJobError(f"the job for {key.describe()} was removed while being submitted; "
                                     "call again to submit it anew")
            job = Job(db, record)
            current = job.state()
            state: JobState | None = current
            if current.status in RELAUNCHED_STATUSES:
                self._relaunch(job, current.status)
                if action == "auto":
                    return None
                state = None
        else:
            job, state = Job(db, self._existing(db, key, action)), None
        self._check_code(job.record)
        if action in ("auto", "dont_submit"):
            return job.result(state)
        if action == "wait":
            return job.wait()
        if action == "re_submit":
            options = self._options
            job.relaunch(options.resolved_queuing_system(), options.N_tasks, dict(options.queue_options),
                         **action_options)
        elif action == "cancel_job":
            job.cancel()
        elif action == "print_job_output":
            print(job.output_text(), end="")
        else:
            raise ValueError(f"unknown action {action!r}")
        return None

    def _check_code(self, record: JobRecord) -> None:
        changes = code_changes(self._function, record.code_hash, record.code_parts)
        if changes:
            warn(f"{self._function.__qualname__} changed since job {record.job_name} was submitted: "
                 f"{'; '.join(changes)}. Returning the stored result; use @do_submit to run the new code.",
                 CodeChangedWarning)


def _plain_function(function: Callable[..., Any]) -> Callable[..., Any]:
    return function


def _keeps_positions(old: RunSpace, new: RunSpace) -> bool:
    """Whether every run of ``old`` has the same position in the larger ``new``: more runs
    (``N_runs=n``), or for index tuples a larger first dimension and the same others."""
    if old.flat != new.flat or len(old.dims) != len(new.dims):
        return False
    return new.dims[0] > old.dims[0] and new.dims[1:] == old.dims[1:]


def _imported_launch(job: Job, state: JobState, runs: Any, space: RunSpace) -> dict[str, bytes]:
    """The files of launch 1 of a job that extends ``job``: its runs, ended, with ``job``'s
    merged tally as the launch's result (read like any ended launch's)."""
    files = JobFiles("")
    folder = lambda path: "attempts/1/" + path.name  # noqa: E731 - the names JobFiles gives, in the new job
    note = {"backend": "local", "pid": 0, "imported_from": job.name, "N_runs": job.record.N_runs}
    return {
        folder(files.creator(1)): json.dumps({**Creator.now(), "backend": "local", "imported_from": job.name}).encode(),
        folder(files.runs(1)): LaunchPlan(runs).to_bytes(space),
        folder(files.launch(1)): json.dumps(note).encode(),
        folder(files.result(1)): pickle.dumps(state.tally, protocol=PICKLE_PROTOCOL),
        folder(files.exit_code(1)): b"0",
    }


class _BoundParallelFunction:
    """A decorated method looked up on an instance (``model.simulate``); the action
    decorators accept it as they accept the function: ``wait(model.simulate)(L=64)``."""

    def __init__(self, target: ParallelFunction, instance: Any) -> None:
        functools.update_wrapper(self, target._function)
        self._target, self._instance, self._function = target, instance, target._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("auto", args, kwargs)

    def _call(self, action: str, args: tuple, kwargs: dict, **action_options: Any) -> Any:
        return self._target._call(action, (self._instance, *args), kwargs, **action_options)

    def __repr__(self) -> str:
        return f"<bound {self._target!r} of a {type(self._instance).__qualname__}>"


# ------------------------------------------------------------------ decorators
def parallel(N_runs: int | tuple[int, ...], N_tasks: int, **options: Any) -> Callable[[Callable[..., Any]], ParallelFunction]:
    """Run a function ``N_runs`` times on ``N_tasks`` MPI ranks and keep every output.

    The first call with some arguments submits a job and returns None; later calls
    return a mapping run id -> output (the finished runs so far, warning about the
    others). Options of parallelaverage: ``encoding`` ("pickle" or "json"), ``path``,
    ``queuing_system`` ("auto", "local", "slurm"), ``seed``, ``dynamic_load_balancing``,
    ``pickle_by_value``; every other keyword goes to the queuing system (SLURM's
    ``time``, ``mem``, ...).

    Raises:
        OptionError, OptionTypeError: an invalid option, at decoration time (also
            ``ValueError``/``TypeError``).
        RunsFailedError: (on a call) the job stopped and every run failed.
    """
    parsed = parse_options(N_runs, N_tasks, average=None, keep_runs=True, options=options)
    return lambda function: ParallelFunction(function, parsed)


def parallel_average(N_runs: int | tuple[int, ...], N_tasks: int, average_results: Any = "all",
                     keep_runs: bool = False, **options: Any) -> Callable[[Callable[..., Any]], ParallelFunction]:
    """Run a function ``N_runs`` times on ``N_tasks`` MPI ranks and average its outputs.

    Later calls return an ``AveragedResult`` (mean, estimated error and variance of the
    runs finished so far); a function returning a tuple gets a tuple of results.
    ``average_results`` names the tuple elements to average ("all" by default; the
    others are kept from the last run). ``keep_runs=True`` also keeps every output.
    ``statistics=(...)`` collects more of each averaged element, merged like the mean:
    ``"covariance"``, ``"moments"``, ``"jackknife:20"``, ``"histogram:bins=50,range=(0,1)"``,
    ``"autocorrelation"`` (specs of :func:`parallelaverage.stats.from_spec`; a mapping
    ``{element: specs}`` for some tuple elements only); the result has them as
    ``.covariance``, ``.skewness``, ``.jackknife(f)``, ``.histogram``,
    ``.autocorrelation_time``... They are not part of the call's identity: a call that
    asks for other statistics than its job collected gets the job's result, which says
    what it lacks. Other options as for :func:`parallel`.

    Raises:
        OptionError, OptionTypeError: an invalid option, at decoration time.
        RunsFailedError: (on a call) the job stopped and every run failed.
    """
    parsed = parse_options(N_runs, N_tasks, average=average_results, keep_runs=keep_runs, options=options)
    return lambda function: ParallelFunction(function, parsed)


class _Action:
    """A decorated function with an action applied: calling it performs the action."""

    _target: ParallelFunction | _BoundParallelFunction

    def __init__(self, target: Any, action: str, options: dict[str, Any] | None = None) -> None:
        while isinstance(target, _Action):
            target = target._target
        if not isinstance(target, (ParallelFunction, _BoundParallelFunction)):
            raise TypeError(f"@{action} applies to a function decorated with @parallel or "
                            f"@parallel_average, not to {target!r}")
        functools.update_wrapper(self, target._function)
        self._target, self._action, self._options = target, action, options or {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target._call(self._action, args, kwargs, **self._options)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # an action stacked on a decorated method in a class body
        if instance is None or not isinstance(self._target, ParallelFunction):
            return self
        return _Action(self._target.__get__(instance, owner), self._action, self._options)


def _action(name: str, doc: str) -> Callable[[Any], _Action]:
    def decorator(function: Any) -> _Action:
        return _Action(function, name)

    decorator.__name__ = decorator.__qualname__ = name
    decorator.__doc__ = doc
    return decorator


do_submit = _action("do_submit", "Submit a new job for the call even if one exists.")
dont_submit = _action("dont_submit", "Only load the call's job; raise NoJobError (listing the closest calls) if none.")
cancel_job = _action("cancel_job", "Cancel the call's job and every process it started.")
print_job_output = _action("print_job_output", "Print the standard output and error of the call's job.")
wait = _action("wait", "Block until the call's job is complete (submitting it if needed); return its result.")


def re_submit(function: Any = None, *, include_crashed: bool = False, fresh_streams: bool = False) -> Any:
    """Run again only the failed and missing runs of the call's job, merging into it.

    ``re_submit(f)(x)`` or ``@re_submit``; ``re_submit(f, include_crashed=True)`` also
    re-runs the runs that crashed their rank (left out by default: they would crash it
    again), ``fresh_streams=True`` gives the re-run runs new random streams (default:
    the same ones, so a run's result does not depend on which launch ran it).
    If another caller re-submits the job at the same moment, one of the two launches
    and the other says so.
    """
    options = {"include_crashed": include_crashed, "fresh_streams": fresh_streams}
    if function is None:
        return lambda target: _Action(target, "re_submit", options)
    return _Action(function, "re_submit", options)


def load_job(job_name: str | int, path: str = ".") -> Any:
    """The result of a stored job by its name (``"3_simulate"``) or number (``3``), without
    the function."""
    return Job.load(job_name, path).result()
