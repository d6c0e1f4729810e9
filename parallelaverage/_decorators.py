"""``parallel``, ``parallel_average`` and the action decorators: the user's entry points.

A decorated function's call is looked up in the job database by its canonical key:
unknown calls are submitted (and return None), known ones return their result so far.
Action decorators (``dont_submit``, ``do_submit``, ``re_submit``, ``cancel_job``,
``print_job_output``, ``wait``) change what a call does; they stack on top of the
decorated function or wrap it in a call: ``wait(f)(x)``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Callable

import cloudpickle

from parallelaverage import _jobs
from parallelaverage._jobfiles import JobFiles
from parallelaverage._job import Job, say
from parallelaverage.errors import CodeChangedWarning, NoJobError, warn
from parallelaverage._options import JobOptions, parse_options, run_ids
from parallelaverage.jobdb import JobDatabase, JobRecord, call_key, code_changes, code_fingerprint, code_hash, new_record

__all__ = [
    "parallel", "parallel_average", "do_submit", "dont_submit", "re_submit", "cancel_job",
    "print_job_output", "wait", "load_job", "NoJobError",
]

PREFIX = "[parallelaverage]"


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
    def _key(self, args: tuple, kwargs: dict) -> Any:
        average = self._options.average
        return call_key(self._function, args, kwargs, N_runs=self._options.N_runs,
                        average_results="keep" if average is None else average)

    def _database(self) -> JobDatabase:
        return JobDatabase(self._options.path)

    def _payload(self, args: tuple, kwargs: dict, seed: int) -> bytes:
        options = self._options
        for module in options.pickle_by_value:
            cloudpickle.register_pickle_by_value(module)
        try:
            return cloudpickle.dumps({
                "function": self._function, "args": args, "kwargs": kwargs,
                "average": options.average, "keep_runs": options.keep_runs or options.average is None,
                "encoding": options.encoding, "seed": seed,
                "dynamic_load_balancing": options.dynamic_load_balancing,
            }, protocol=5)
        except Exception as error:
            raise TypeError(
                f"{self._function.__qualname__} or its arguments cannot be sent to the MPI ranks "
                f"({type(error).__name__}: {error}); make them picklable"
            ) from error
        finally:
            for module in options.pickle_by_value:
                cloudpickle.unregister_pickle_by_value(module)

    def _submit(self, db: JobDatabase, key: Any, args: tuple, kwargs: dict, force: bool) -> JobRecord | None:
        options = self._options
        seed = options.seed if options.seed is not None else int(hashlib.sha256(key.digest.encode()).hexdigest()[:8], 16)
        payload = self._payload(args, kwargs, seed)
        backend = _jobs.backend_for(options.resolved_queuing_system())
        recorded = {**options.recorded(), "average": options.average, "seed": seed}

        def make_record(name: str) -> JobRecord:
            return new_record(key, name, code_hash=code_hash(self._function),
                              code_parts=code_fingerprint(self._function), options=recorded,
                              status="submitted", queue=backend.name)

        if force:
            record, created = db.create(key, make_record, files={"payload.pkl": payload}), True
        else:
            record, created = db.get_or_create(key, make_record, files={"payload.pkl": payload})
        if not created:
            return None
        say(f"submitting job {record.job_name} ({options.total_runs} runs on {options.N_tasks} "
             f"MPI ranks, {backend.name})")
        files = JobFiles(db.job_dir(record))
        try:
            _, info = _jobs.launch(files, backend, run_ids(options.N_runs), options.N_tasks,
                                   dict(options.queue_options))
        except BaseException:
            db.update(record.job_name, status="submit_failed")  # reported as never launched
            raise
        db.update(record.job_name, status="running", queue=backend.name,
                  queue_job_id=str(info.get("job_id", info.get("pid"))))
        return record

    def _existing(self, db: JobDatabase, key: Any, action: str) -> JobRecord:
        record = db.lookup(key)
        if record is None:
            closest = db.closest(key)
            hint = "; closest stored calls: " + ", ".join(r.call for r in closest) if closest else ""
            raise NoJobError(
                f"{action}: no job for {key.describe()} in {Path(self._options.path).resolve()}/.parallelaverage"
                f"{hint}. Call it without @{action} to submit it."
            )
        return record

    # ----------------------------------------------------------------- actions
    def _call(self, action: str, args: tuple, kwargs: dict) -> Any:
        key = self._key(args, kwargs)
        db = self._database()
        if action == "do_submit":
            self._submit(db, key, args, kwargs, force=True)
            return None
        if action in ("auto", "wait"):
            record = db.lookup(key)
            if record is None:
                record = self._submit(db, key, args, kwargs, force=False) or db.lookup(key)
                if action == "auto":
                    return None
                if record is None:  # removed (cleanup) right after another caller made it
                    raise NoJobError(f"the job for {key.describe()} was removed while being submitted; "
                                     "call again to submit it anew")
        else:
            record = self._existing(db, key, action)
        changes = code_changes(self._function, record.code_hash, record.code_parts)
        if changes:
            warn(f"{self._function.__qualname__} changed since job {record.job_name} was submitted: "
                 f"{'; '.join(changes)}. Returning the stored result; use @do_submit to run the new code.",
                 CodeChangedWarning)
        job = Job(db, record)
        if action in ("auto", "dont_submit"):
            return job.result()
        if action == "wait":
            return job.wait()
        if action == "re_submit":
            job.resubmit(self._options.N_tasks, dict(self._options.queue_options))
        elif action == "cancel_job":
            job.cancel()
        elif action == "print_job_output":
            print(job.output_text(), end="")
        else:
            raise ValueError(f"unknown action {action!r}")
        return None


def _plain_function(function: Callable[..., Any]) -> Callable[..., Any]:
    return function


class _BoundParallelFunction:
    """A decorated method looked up on an instance (``model.simulate``); the action
    decorators accept it as they accept the function: ``wait(model.simulate)(L=64)``."""

    def __init__(self, target: ParallelFunction, instance: Any) -> None:
        functools.update_wrapper(self, target._function)
        self._target, self._instance, self._function = target, instance, target._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("auto", args, kwargs)

    def _call(self, action: str, args: tuple, kwargs: dict) -> Any:
        return self._target._call(action, (self._instance, *args), kwargs)

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
        TypeError, ValueError: an invalid option, at decoration time.
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
    Other options as for :func:`parallel`.

    Raises:
        TypeError, ValueError: an invalid option, at decoration time.
    """
    parsed = parse_options(N_runs, N_tasks, average=average_results, keep_runs=keep_runs, options=options)
    return lambda function: ParallelFunction(function, parsed)


class _Action:
    """A decorated function with an action applied: calling it performs the action."""

    _target: ParallelFunction | _BoundParallelFunction

    def __init__(self, target: Any, action: str) -> None:
        while isinstance(target, _Action):
            target = target._target
        if not isinstance(target, (ParallelFunction, _BoundParallelFunction)):
            raise TypeError(f"@{action} applies to a function decorated with @parallel or "
                            f"@parallel_average, not to {target!r}")
        functools.update_wrapper(self, target._function)
        self._target, self._action = target, action

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target._call(self._action, args, kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # an action stacked on a decorated method in a class body
        if instance is None or not isinstance(self._target, ParallelFunction):
            return self
        return _Action(self._target.__get__(instance, owner), self._action)


def _action(name: str, doc: str) -> Callable[[Any], _Action]:
    def decorator(function: Any) -> _Action:
        return _Action(function, name)

    decorator.__name__ = decorator.__qualname__ = name
    decorator.__doc__ = doc
    return decorator


do_submit = _action("do_submit", "Submit a new job for the call even if one exists.")
dont_submit = _action("dont_submit", "Only load the call's job; raise NoJobError (listing the closest calls) if none.")
re_submit = _action("re_submit", "Run again only the failed and missing runs of the call's job, merging into it.")
cancel_job = _action("cancel_job", "Cancel the call's job and every process it started.")
print_job_output = _action("print_job_output", "Print the standard output and error of the call's job.")
wait = _action("wait", "Block until the call's job is complete (submitting it if needed); return its result.")


def load_job(job_name: str, path: str = ".") -> Any:
    """The result of a stored job by its name (``"3_simulate"``), without the function."""
    return Job.load(job_name, path).result()
