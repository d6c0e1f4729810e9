"""The files of one job folder: where each lives, and the small JSON ones' formats.

Written by the caller (payload, launch plans, launch records) and by the ranks
(status, snapshots, results, outputs). Layout of ``<path>/.parallelaverage/<n>_<function>/``::

    job.json                  the record (parallelaverage.jobdb)
    payload.pkl               cloudpickle of the function, its arguments and job settings
    attempts/<k>/             launch k: the first launch is 1, each re-submission adds one
      creator.json            who is making the launch (host, pid, start time): written first
      runs.json               the launch plan: which runs (as position ranges), which streams
      launch.json             how the launch was started (backend, pid or queue job id)
      submit_error.txt        why the queue refused the launch (then there is no launch.json)
      rank-r<rank>.status     each rank's status record (parallelaverage.jobfiles.rankstatus)
      snapshot-r<rank>.pkl    each rank's tally so far (parallelaverage.jobfiles.tally)
      result.pkl              the launch's merged tally, written last by rank 0
      outputs-r<rank>.bin|.jsonl  every run's output, appended once (parallelaverage.jobfiles.outputs)
      sealed.pkl              the launch's tally frozen when a later launch was made
      cancel_requested        a cancel that came while the launch was being made
      fatal-r<rank>.txt       why a rank could not start its runs
      launcher.pid, exit_code, stdout.txt, stderr.txt, job.sbatch, slurm_state

Every file but the append-only outputs and the memory-mapped status records is
written atomically (temporary file, fsync, ``os.replace``).

Knows nothing of statistics or of the job database.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from parallelaverage._atomic import atomic_write_bytes
from parallelaverage.jobfiles.rankstatus import process_start_ticks
from parallelaverage.runspace import Positions, RunSpace

__all__ = ["JobFiles", "LaunchPlan", "Creator"]

PLAN_SCHEMA = 2


class LaunchPlan:
    """Which runs a launch executes and how: the content of ``runs.json``.

    Attributes:
        positions: the runs, as positions of the job's run space.
        stream_generation: 0 for the runs' own random streams; another number
            (the launch's) for fresh streams (``re_submit(fresh_streams=True)``).
    """

    __slots__ = ("positions", "stream_generation")

    def __init__(self, positions: Positions, stream_generation: int = 0) -> None:
        self.positions, self.stream_generation = positions, stream_generation

    def to_bytes(self, space: RunSpace) -> bytes:
        return json.dumps({"schema": PLAN_SCHEMA, "N_runs": space.canonical,
                           "positions": self.positions.to_json(),
                           "stream_generation": self.stream_generation}).encode()

    @classmethod
    def from_bytes(cls, data: bytes, space: RunSpace) -> LaunchPlan:
        """Read a plan; a list of run ids (the format before schema 2) is understood too.

        Raises:
            ValueError: not a launch plan.
        """
        value = json.loads(data)
        if isinstance(value, list):  # schema 1: the run ids themselves
            return cls(Positions.of(space.position_of(space.decode_id(run)) for run in value))
        if not isinstance(value, dict) or value.get("schema") != PLAN_SCHEMA:
            raise ValueError("not a launch plan of a schema this version reads")
        generation = value.get("stream_generation", 0)
        if type(generation) is not int or generation < 0:
            raise ValueError(f"stream_generation={generation!r}: must be an integer >= 0")
        return cls(Positions.from_json(value["positions"]), generation)


    @classmethod
    def read_with_space(cls, path: Path) -> tuple[LaunchPlan, RunSpace]:
        """A plan and the run space it names (what a rank needs; schema 2 only).

        Raises:
            ValueError: not a launch plan of schema 2.
        """
        value = json.loads(path.read_bytes())
        if not isinstance(value, dict) or "N_runs" not in value:
            raise ValueError(f"{path} is not a launch plan this version of the worker reads")
        space = RunSpace(value["N_runs"])
        return cls.from_bytes(path.read_bytes(), space), space


class Creator:
    """Who is making a launch: written before anything else of the launch exists."""

    @staticmethod
    def now() -> dict[str, Any]:
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "start_ticks": process_start_ticks(pid),
                "created_at": time.time()}

    @staticmethod
    def alive(info: dict[str, Any], grace_s: float) -> bool:
        """Whether the creator may still be at work: its process lives (same host), or,
        on another host, it said so (created the launch, or :meth:`still_at_work`) less
        than ``grace_s`` ago."""
        if info.get("host") == socket.gethostname():
            pid = info.get("pid")
            return isinstance(pid, int) and process_start_ticks(pid) == info.get("start_ticks")
        moments = [t for t in (info.get("created_at"), info.get("alive_at")) if isinstance(t, (int, float))]
        return not moments or time.time() - max(moments) < grace_s

    @staticmethod
    def still_at_work(path: Path) -> None:
        """Say, in the creator record at ``path``, that its creator still works on the
        launch (one that waits long before submitting it: a full queue); best effort."""
        try:
            info = json.loads(path.read_bytes())
            if isinstance(info, dict):
                atomic_write_bytes(path, json.dumps({**info, "alive_at": time.time()}).encode())
        except (OSError, ValueError):
            pass


class JobFiles:
    """Paths of one job folder (nothing is read or written on construction)."""

    def __init__(self, job_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(job_dir)

    @property
    def payload(self) -> Path:
        return self.dir / "payload.pkl"

    @property
    def batch(self) -> Path:
        """In the folder of a launch made by ``f.map`` (``.parallelaverage/batches/<id>``):
        the jobs whose runs the launch runs, in order."""
        return self.dir / "batch.json"

    # ------------------------------------------------------------------ launches
    @property
    def launches_dir(self) -> Path:
        return self.dir / "attempts"

    def launch_dir(self, launch_no: int) -> Path:
        return self.dir / "attempts" / str(launch_no)

    def launch_numbers(self) -> list[int]:
        """Numbers of the launches made so far, in order."""
        try:
            names = os.listdir(self.launches_dir)
        except FileNotFoundError:
            return []
        return sorted(int(name) for name in names if name.isdigit())

    def creator(self, launch_no: int) -> Path:
        return self.launch_dir(launch_no) / "creator.json"

    def runs(self, launch_no: int) -> Path:
        return self.launch_dir(launch_no) / "runs.json"

    def launch(self, launch_no: int) -> Path:
        return self.launch_dir(launch_no) / "launch.json"

    def submit_error(self, launch_no: int) -> Path:
        return self.launch_dir(launch_no) / "submit_error.txt"

    def cancel_request(self, launch_no: int) -> Path:
        return self.launch_dir(launch_no) / "cancel_requested"

    def target(self, launch_no: int) -> Path:
        """Written by rank 0 when the launch reached its target error (``target_error=``):
        ``{"kind", "target", "runs", "effective_runs", "error_over_target"}``."""
        return self.launch_dir(launch_no) / "target.json"

    def sealed(self, launch_no: int) -> Path:
        """The launch's tally frozen when a later launch was made (see ``_state``)."""
        return self.launch_dir(launch_no) / "sealed.pkl"

    # ------------------------------------------------------------------ lives
    def life_dir(self, launch_no: int, life: int = 0) -> Path:
        """Where the ranks of one *life* of a launch write: a launch that SLURM requeues
        (a node failure, preemption, its own time limit) runs again as life 1, 2...
        in ``attempts/<k>/life-<n>/``; life 0 writes in the launch folder itself."""
        return self.launch_dir(launch_no) if life == 0 else self.launch_dir(launch_no) / f"life-{life}"

    def lives(self, launch_no: int) -> list[int]:
        """The lives of a launch so far: ``[0]``, or ``[0, 1, ...]`` after requeues."""
        try:
            names = os.listdir(self.launch_dir(launch_no))
        except FileNotFoundError:
            return [0]
        return [0] + sorted(int(n[5:]) for n in names if n.startswith("life-") and n[5:].isdigit())

    def life_seal(self, launch_no: int, life: int) -> Path:
        """A life's tally, frozen by the first rank of the next life before it runs anything."""
        return self.life_dir(launch_no, life) / "sealed-life.pkl"

    def life_end(self, launch_no: int, life: int) -> Path:
        """Why a life stopped early by itself (its time limit), with the runs it left."""
        return self.life_dir(launch_no, life) / "life-end.json"

    # ------------------------------------------------------------------ ranks
    def rank_status(self, launch_no: int, rank: int, life: int = 0) -> Path:
        return self.life_dir(launch_no, life) / f"rank-r{rank}.status"

    def rank_statuses(self, launch_no: int, life: int | None = None) -> list[tuple[int, Path]]:
        """``(rank, path)`` of every rank that started, by rank (of the latest life by default)."""
        return self._per_rank(launch_no, "rank-r", ".status", self._life(launch_no, life))

    def snapshot(self, launch_no: int, rank: int, life: int = 0) -> Path:
        return self.life_dir(launch_no, life) / f"snapshot-r{rank}.pkl"

    def snapshots(self, launch_no: int, life: int = 0) -> list[Path]:
        return [path for _, path in self._per_rank(launch_no, "snapshot-r", ".pkl", life)]

    def done_log(self, launch_no: int, rank: int, life: int = 0) -> Path:
        return self.life_dir(launch_no, life) / f"done-r{rank}.ranges"

    def result(self, launch_no: int, life: int | None = None) -> Path:
        """The merged tally the ranks of a life write last (of the latest life by default)."""
        return self.life_dir(launch_no, self._life(launch_no, life)) / "result.pkl"

    def outputs(self, launch_no: int, rank: int, encoding: str, life: int = 0) -> Path:
        suffix = "jsonl" if encoding == "json" else "bin"
        return self.life_dir(launch_no, life) / f"outputs-r{rank}.{suffix}"

    def all_outputs(self, launch_no: int) -> list[Path]:
        """The output files of every life of a launch, oldest first."""
        return [path for life in self.lives(launch_no)
                for path in sorted(self.life_dir(launch_no, life).glob("outputs-r*.*"))]

    def fatal(self, launch_no: int, rank: int, life: int = 0) -> Path:
        return self.life_dir(launch_no, life) / f"fatal-r{rank}.txt"

    def fatals(self, launch_no: int, life: int | None = None) -> list[Path]:
        return [path for _, path in self._per_rank(launch_no, "fatal-r", ".txt", self._life(launch_no, life))]

    def _life(self, launch_no: int, life: int | None) -> int:
        return self.lives(launch_no)[-1] if life is None else life

    def exit_code(self, launch_no: int) -> Path:
        return self.launch_dir(launch_no) / "exit_code"

    def stdout(self, launch_no: int) -> Path:
        return self.launch_dir(launch_no) / "stdout.txt"

    def stderr(self, launch_no: int) -> Path:
        return self.launch_dir(launch_no) / "stderr.txt"

    def _per_rank(self, launch_no: int, prefix: str, suffix: str, life: int = 0) -> list[tuple[int, Path]]:
        directory = self.life_dir(launch_no, life)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.startswith(prefix) and name.endswith(suffix):
                middle = name[len(prefix) : len(name) - len(suffix)]
                if middle.isdigit():
                    found.append((int(middle), directory / name))
        return sorted(found)

    # ------------------------------------------------------------------ small files
    def write_plan(self, launch_no: int, plan: LaunchPlan, space: RunSpace) -> None:
        atomic_write_bytes(self.runs(launch_no), plan.to_bytes(space))

    def read_plan(self, launch_no: int, space: RunSpace) -> LaunchPlan:
        return LaunchPlan.from_bytes(self.runs(launch_no).read_bytes(), space)

    def read_json(self, path: Path) -> Any:
        """A small JSON file, or None if it is missing or unreadable."""
        try:
            return json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None

    def exit_status(self, launch_no: int) -> int | None:
        """The launcher's exit status, if it ended and wrote one."""
        try:
            return int(self.exit_code(launch_no).read_text().strip())
        except (OSError, ValueError):
            return None

    def stderr_tail(self, launch_no: int, lines: int = 8) -> str:
        """The last lines of the launch's ``stderr.txt`` ('' if none)."""
        try:
            with open(self.stderr(launch_no), "rb") as file:
                file.seek(0, os.SEEK_END)
                size = file.tell()
                file.seek(max(0, size - 8192))
                text = file.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])
