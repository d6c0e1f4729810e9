"""JobDatabase in one process: round trips, layout, corrupt files, bad paths, lock timeouts."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import subprocess
import sys
import threading

import pytest

from parallelaverage import errors as pa_errors
from jobdb_helpers import key_of, maker, subprocess_env

from parallelaverage.jobdb import (
    CorruptFileError,
    JobDatabase,
    JobNotFoundError,
    LockTimeoutError,
    atomic_write_json,
    call_key,
    new_record,
    read_json,
)
from parallelaverage._atomic import TEMP_MARKER


@pytest.fixture
def db(tmp_path):
    return JobDatabase(tmp_path)


def all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def index_file(db, key):
    return db.root / "index" / key.digest[:2] / f"{key.digest}.json"


# ------------------------------------------------------------ the directory


def test_path_must_exist(tmp_path):
    with pytest.raises(ValueError, match=r"job database path .*nowhere does not exist; create it"):
        JobDatabase(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_path_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        JobDatabase(tmp_path / "file")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".parallelaverage").write_text("x")
    with pytest.raises(ValueError, match=r"\.parallelaverage is a file"):
        JobDatabase(tmp_path / "d")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories; see the os.access test")
def test_a_read_only_path_can_be_read_but_not_written(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        db = JobDatabase(folder)  # reading needs no write access
        assert db.lookup(key_of(1)) is None and db.jobs() == []
        with pytest.raises(PermissionError, match="read-only for this user"):
            db.get_or_create(key_of(1), maker(key_of(1)))
    finally:
        folder.chmod(stat.S_IRWXU)


def test_unwritable_path_is_refused_per_os_access(tmp_path, monkeypatch):
    # Beside the real test above, which cannot run as root.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    db = JobDatabase(tmp_path)
    assert not db.writable
    with pytest.raises(pa_errors.ReadOnlyDatabaseError, match=f"{tmp_path} is read-only for this user"):
        db.get_or_create(key_of(1), maker(key_of(1)))


def test_nothing_is_written_until_a_job_is_created(tmp_path, db):
    assert db.lookup(key_of(1)) is None
    assert db.jobs() == []
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [threading.Lock(), (i for i in range(3))], ids=["lock", "generator"])
def test_an_unstorable_argument_fails_before_anything_is_written(tmp_path, db, bad):
    with pytest.raises(TypeError, match="argument 'seed' of simulate\\(\\) cannot be stored"):
        key = key_of(64, seed=bad)
        db.get_or_create(key, maker(key))
    assert os.listdir(tmp_path) == []


def test_relative_path_is_fixed_at_construction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = JobDatabase(".")
    monkeypatch.chdir("/")
    assert db.root == tmp_path / ".parallelaverage"


# ------------------------------------------------------------ round trips


def test_get_or_create_then_lookup(tmp_path, db):
    key = key_of(64)
    record, created = db.get_or_create(key, maker(key, N_tasks=2))
    assert created and record.job_name == "1_simulate" and record.options == {"N_tasks": 2}
    assert db.lookup(key) == record
    assert db.lookup(key_of(L=64, T=2.5)) == record
    again, created = db.get_or_create(key, lambda name: pytest.fail("make_record called for an existing job"))
    assert not created and again == record
    job_dir = db.job_dir(record)
    assert job_dir == tmp_path / ".parallelaverage" / "1_simulate"
    assert stat.S_IMODE(job_dir.stat().st_mode) == 0o700
    assert read_json(job_dir / "job.json") == record.to_json()
    assert read_json(index_file(db, key))["job_name"] == "1_simulate"
    assert (job_dir / "job.json").read_text().startswith("{\n  ")
    assert not [p for p in all_files(tmp_path) if TEMP_MARKER in p or ".creating-" in p]


def test_indices_increase_per_database(db):
    names = [db.get_or_create(k, maker(k))[0].job_name for k in (key_of(1), key_of(2), key_of(3))]
    assert names == ["1_simulate", "2_simulate", "3_simulate"]
    assert [r.job_name for r in db.jobs()] == ["3_simulate", "2_simulate", "1_simulate"]


def test_files_appear_with_the_job(db):
    key = key_of(1)
    record, _ = db.get_or_create(key, maker(key), files={"call.pkl": b"payload"})
    assert (db.job_dir(record) / "call.pkl").read_bytes() == b"payload"
    with pytest.raises(ValueError, match="must be a relative path of plain names"):
        db.get_or_create(key_of(2), maker(key_of(2)), files={"../evil": b""})


def test_create_replaces_the_index_entry_and_keeps_the_old_job(db):
    key = key_of(64)
    old, _ = db.get_or_create(key, maker(key))
    new = db.create(key, maker(key))
    assert new.job_name == "2_simulate"
    assert db.lookup(key) == new
    assert db.load(old.job_name) == old
    assert {r.job_name for r in db.jobs()} == {old.job_name, new.job_name}


def test_current_job_of_a_superseded_job_is_the_newer_one(db):
    key = key_of(64)
    old, _ = db.get_or_create(key, maker(key))
    assert db.current_job_of(old) == old.job_name
    new = db.create(key, maker(key))  # do_submit
    assert db.current_job_of(old) == db.current_job_of(new) == new.job_name
    index_file(db, key).unlink()  # an entry removed by hand: no job answers the call until reindex
    assert db.current_job_of(old) is None
    assert db.reindex() == [new.job_name] and db.current_job_of(old) == new.job_name


def test_names_and_stamps_of_job_folders(db):
    assert db.job_names() == [] and db.record_stamp("1_simulate") is None
    for L in range(1, 12):
        db.get_or_create(key_of(L), maker(key_of(L)))
    assert db.job_names() == [f"{n}_simulate" for n in range(1, 12)]  # by number, not as text
    assert db.is_job_name("11_simulate") and not any(map(db.is_job_name, ["11", "../1_x", "0_x", ".1_x", "1_x/y"]))
    stamp = db.record_stamp("3_simulate")
    assert stamp is not None and stamp == db.record_stamp("3_simulate")
    db.update("3_simulate", status="running")
    assert db.record_stamp("3_simulate") != stamp  # a new file (renamed into place): a new inode
    (db.job_dir("3_simulate") / "job.json").unlink()
    assert db.record_stamp("3_simulate") is None
    with pytest.raises(ValueError, match="is not a job name"):
        db.record_stamp("../x")


def test_leftovers_of_crashed_writers(db):
    key = key_of(1)
    record, _ = db.get_or_create(key, maker(key))
    staging = db.root / ".creating-host-1-abcd"
    removing = db.root / ".removing-2_simulate-abcd"
    for folder in (staging, removing):
        folder.mkdir()
        (folder / f".job.json{TEMP_MARKER}x").write_text("{")  # inside a leftover folder: goes with it
    temp = db.job_dir(record) / f".job.json{TEMP_MARKER}host-1-abcd"
    temp.write_text("{")
    assert db.leftovers(min_age_s=3600) == []  # young: a writer may still be at work
    old = os.stat(temp).st_mtime - 7200
    for path in (staging, removing, temp):
        os.utime(path, (old, old))
    assert sorted(db.leftovers(min_age_s=3600)) == sorted([staging, removing, temp])
    assert db.job_names() == [record.job_name]


def test_save_update_and_load(db):
    key = key_of(64)
    record, _ = db.get_or_create(key, maker(key))
    saved = db.save(dataclasses.replace(record, status="submitted", queue="local", queue_job_id="123"))
    assert saved.updated_at >= record.updated_at
    assert db.load(record.job_name) == saved == db.lookup(key)
    updated = db.update(record.job_name, status="completed", n_successful=10, n_not_ready=0)
    assert (updated.status, updated.n_successful, updated.queue_job_id) == ("completed", 10, "123")
    assert db.load(record.job_name) == updated


def test_save_and_update_refuse_to_change_the_call(db):
    a, _ = db.get_or_create(key_of(1), maker(key_of(1)))
    b, _ = db.get_or_create(key_of(2), maker(key_of(2)))
    with pytest.raises(ValueError, match="cannot replace job 1_simulate, which is for simulate"):
        db.save(dataclasses.replace(b, job_name=a.job_name))
    with pytest.raises(ValueError, match="cannot change key_digest"):
        db.update(a.job_name, key_digest="0" * 64)
    with pytest.raises(ValueError, match="unknown field"):
        db.update(a.job_name, colour="red")


def test_missing_jobs(db):
    with pytest.raises(JobNotFoundError, match="no job '7_simulate' in .*parallelaverage list"):
        db.load("7_simulate")
    record = new_record(key_of(1), "7_simulate", code_hash="x")
    with pytest.raises(JobNotFoundError):
        db.save(record)
    with pytest.raises(JobNotFoundError):
        db.remove("7_simulate")


def test_job_dir_rejects_paths(db):
    for bad in ("../x", "1_a/../../b", "simulate", "0_simulate", ""):
        with pytest.raises(ValueError, match="is not a job name"):
            db.job_dir(bad)


def test_remove_deletes_the_index_entry_then_the_folder(db):
    key = key_of(1)
    record, _ = db.get_or_create(key, maker(key))
    db.remove(record.job_name)
    assert db.lookup(key) is None
    assert not index_file(db, key).exists() and not db.job_dir(record).exists()
    assert not [p for p in os.listdir(db.root) if p.startswith(".")]
    again, created = db.get_or_create(key, maker(key))
    assert created and again.job_name == "2_simulate"


def test_remove_of_a_replaced_job_keeps_the_newer_index_entry(db):
    key = key_of(1)
    old, _ = db.get_or_create(key, maker(key))
    new = db.create(key, maker(key))
    db.remove(old.job_name)
    assert db.lookup(key) == new


def test_closest_calls_of_the_same_function(db):
    for L in (16, 32, 64, 128):
        db.get_or_create(key_of(L), maker(key_of(L)))
    db.get_or_create(key_of(64, N_runs=99), maker(key_of(64, N_runs=99)))

    def simulate(L, T=2.5, seed=None):  # same name, other function (another module path)
        return L

    other = call_key(simulate, (64,), {}, N_runs=10)
    db.get_or_create(other, lambda name: new_record(other, name, code_hash="x"))
    closest = db.closest(key_of(65), n=3)
    assert closest[0].call == "simulate(L=64, T=2.5, seed=None)" and closest[0].N_runs == 10
    assert len(closest) == 3
    assert all(r.function == key_of(1).function for r in closest)
    assert db.closest(key_of(64)) and key_of(64).digest not in {r.key_digest for r in db.closest(key_of(64), n=10)}


def test_make_record_must_honour_name_and_key(tmp_path, db):
    key = key_of(1)
    with pytest.raises(ValueError, match="must use the job name it is given"):
        db.get_or_create(key, lambda name: new_record(key, "9_other", code_hash="x"))
    with pytest.raises(ValueError, match="key.digest"):
        db.get_or_create(key, lambda name: new_record(key_of(2), name, code_hash="x"))
    with pytest.raises(ZeroDivisionError):
        db.get_or_create(key, lambda name: 1 / 0)
    assert db.lookup(key) is None and db.jobs() == []
    assert [p for p in os.listdir(db.root) if p not in ("index", "locks")] == []


# ------------------------------------------------------------ damaged files


def test_corrupt_job_json_is_named_and_left_alone(db):
    key = key_of(1)
    record, _ = db.get_or_create(key, maker(key))
    path = db.job_dir(record) / "job.json"
    path.write_text('{"schema_version": 1, "job_name": "1_simu')
    before = path.read_bytes()
    for action in (
        lambda: db.lookup(key),
        lambda: db.get_or_create(key, maker(key)),
        lambda: db.load(record.job_name),
        lambda: db.save(record),
        lambda: db.update(record.job_name, status="running"),
    ):
        with pytest.raises(CorruptFileError) as info:
            action()
        assert info.value.path == str(path)
    assert path.read_bytes() == before


def test_foreign_job_json_is_rejected(db):
    key = key_of(1)
    record, _ = db.get_or_create(key, maker(key))
    path = db.job_dir(record) / "job.json"
    atomic_write_json(path, {"hello": "world"})
    with pytest.raises(CorruptFileError, match="not a parallelaverage job record"):
        db.lookup(key)
    atomic_write_json(path, dataclasses.replace(record, job_name="5_simulate").to_json())
    with pytest.raises(CorruptFileError, match="describes job '5_simulate' but lies in folder '1_simulate'"):
        db.load("1_simulate")


def test_corrupt_index_entry_is_named_and_left_alone(db):
    key = key_of(1)
    db.get_or_create(key, maker(key))
    path = index_file(db, key)
    path.write_bytes(b"\x00\x00garbage")
    for action in (lambda: db.lookup(key), lambda: db.get_or_create(key, maker(key)), lambda: db.create(key, maker(key))):
        with pytest.raises(CorruptFileError) as info:
            action()
        assert info.value.path == str(path)
    assert path.read_bytes() == b"\x00\x00garbage"
    assert len(db.jobs()) == 1  # nothing was created by the failed calls


def test_index_entry_of_another_key_is_corrupt(db):
    a, b = key_of(1), key_of(2)
    db.get_or_create(a, maker(a))
    db.get_or_create(b, maker(b))
    index_file(db, a).write_bytes(index_file(db, b).read_bytes())
    with pytest.raises(CorruptFileError, match="holds the entry of key"):
        db.lookup(a)


def test_jobs_skips_and_reports_unreadable_jobs(db, caplog):
    for L in (1, 2, 3):
        db.get_or_create(key_of(L), maker(key_of(L)))
    (db.root / "2_simulate" / "job.json").write_text("[")
    (db.root / "7_manual").mkdir()
    with caplog.at_level(logging.WARNING, logger="parallelaverage.jobdb"):
        records = db.jobs()
    assert [r.job_name for r in records] == ["3_simulate", "1_simulate"]
    assert "2_simulate" in caplog.text and "7_manual" in caplog.text
    scan = db.scan()
    assert sorted(os.path.basename(os.path.dirname(p.path)) for p in scan.problems) == ["2_simulate", "7_manual"]


def test_deleted_job_folder_makes_its_index_entry_a_miss(db):
    import shutil

    key = key_of(1)
    record, _ = db.get_or_create(key, maker(key))
    shutil.rmtree(db.job_dir(record))
    assert db.lookup(key) is None
    again, created = db.get_or_create(key, maker(key))
    assert created and db.lookup(key) == again


def test_lost_counter_is_recounted_from_the_folders(db):
    for L in (1, 2):
        db.get_or_create(key_of(L), maker(key_of(L)))
    (db.root / "next_index").unlink()
    assert db.get_or_create(key_of(3), maker(key_of(3)))[0].job_name == "3_simulate"
    (db.root / "next_index").write_text("banana")
    with pytest.raises(CorruptFileError, match="next_index: expected a positive integer"):
        db.get_or_create(key_of(4), maker(key_of(4)))


def test_stale_counter_never_reuses_a_job_folder(db):
    for L in (1, 2):
        db.get_or_create(key_of(L), maker(key_of(L)))
    (db.root / "next_index").write_text("1\n")  # as if a lock had failed
    record, _ = db.get_or_create(key_of(3), maker(key_of(3)))
    assert record.job_name == "3_simulate"
    assert db.load("1_simulate").call.startswith("simulate(L=1")


# ------------------------------------------------------------ locks

_HOLD_LOCK = """
import sys, time
from parallelaverage.jobdb.locks import DatabaseLock
with DatabaseLock(sys.argv[1], soft=sys.argv[2] == "soft", timeout_s=10, warn_after_s=10):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("kind", ["flock", "soft"])
def test_waiting_for_a_held_lock_logs_then_times_out_naming_it(tmp_path, caplog, kind):
    db = JobDatabase(tmp_path, soft_locks=kind == "soft", lock_timeout_s=0.6, lock_warn_s=0.2)
    lock_file = db.root / "locks" / "db.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(lock_file), kind],
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.WARNING, logger="parallelaverage.jobdb"):
            with pytest.raises(LockTimeoutError) as info:
                db.get_or_create(key_of(1), maker(key_of(1)))
        assert info.value.lock_path == str(lock_file)
        assert str(lock_file) in str(info.value)
        assert ("delete" in str(info.value)) == (kind == "soft")
        assert f"waiting for the lock {lock_file}" in caplog.text
    finally:
        holder.communicate("release\n", timeout=30)
    assert db.get_or_create(key_of(1), maker(key_of(1)))[1]
    if kind == "flock":
        assert lock_file.exists()  # flock files are never deleted


def test_soft_locks_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PARALLELAVERAGE_SOFT_LOCKS", "1")
    assert JobDatabase(tmp_path).soft_locks
    assert not JobDatabase(tmp_path, soft_locks=False).soft_locks
    monkeypatch.setenv("PARALLELAVERAGE_SOFT_LOCKS", "maybe")
    with pytest.raises(ValueError, match="PARALLELAVERAGE_SOFT_LOCKS='maybe': must be 1 or 0"):
        JobDatabase(tmp_path)
    monkeypatch.delenv("PARALLELAVERAGE_SOFT_LOCKS")
    assert not JobDatabase(tmp_path).soft_locks


def test_soft_lock_round_trip(tmp_path):
    db = JobDatabase(tmp_path, soft_locks=True)
    key = key_of(1)
    record, created = db.get_or_create(key, maker(key))
    assert created and db.update(record.job_name, status="running").status == "running"
    assert not (db.root / "locks" / "db.lock").exists()  # a soft lock is its file's existence


def test_a_filesystem_refusing_flock_names_the_soft_lock_switch(tmp_path, monkeypatch):
    # Beside the real flock tests: NFS without a lock service answers ENOLCK.
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    db = JobDatabase(tmp_path)
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError, match=r"cannot lock .*db\.lock: No locks available; .*PARALLELAVERAGE_SOFT_LOCKS=1"):
        db.get_or_create(key_of(1), maker(key_of(1)))
    monkeypatch.undo()
    assert db.lookup(key_of(1)) is None


def test_a_deleted_database_folder_is_recreated(db):
    import shutil

    db.get_or_create(key_of(1), maker(key_of(1)))
    shutil.rmtree(db.root)
    record, created = db.get_or_create(key_of(1), maker(key_of(1)))
    assert created and record.job_name == "1_simulate"
