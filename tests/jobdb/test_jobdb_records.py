"""The job record and its JSON schema."""

from __future__ import annotations

import dataclasses
import json

import pytest
from jobdb_helpers import key_of, simulate

from parallelaverage.jobdb import (
    SCHEMA_VERSION, CorruptFileError, JobDatabase, JobRecord, call_key, code_hash, new_record,
)


def record(**changes):
    key = key_of(64, N_runs=5)
    base = new_record(key, "3_simulate", code_hash=code_hash(simulate), options={"N_tasks": 2})
    return dataclasses.replace(base, **changes)


def test_new_record_describes_the_call():
    r = record()
    assert r.index == 3 and r.status == "created"
    assert r.N_runs == 5 and r.n_not_ready == 5 and r.n_successful == r.n_failed == 0
    assert r.arguments == {"L": "64", "T": "2.5", "seed": "None"}
    assert r.describe() == "simulate(L=64, T=2.5, seed=None) [N_runs=5]"
    assert r.submitted_at == r.updated_at and r.submitted_at.endswith("+00:00")


def test_json_round_trip_keeps_everything_including_unknown_fields():
    r = record(status="running", n_successful=2, n_failed=1, n_not_ready=2, queue="slurm", queue_job_id="77")
    data = r.to_json()
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["runs"] == {"successful": 2, "failed": 1, "not_ready": 2}
    data["added_by_a_newer_minor_version"] = {"x": 1}
    again = JobRecord.from_json(data, "job.json")
    assert again.extra == {"added_by_a_newer_minor_version": {"x": 1}}
    assert dataclasses.replace(again, extra={}) == r
    assert again.to_json() == data


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda d: d.pop("schema_version"), "not a parallelaverage job record (it has no 'schema_version')"),
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "upgrade parallelaverage"),
        (lambda d: d.update(schema_version="1"), "invalid schema_version '1'"),
        (lambda d: d.pop("key_digest"), "missing 'key_digest'"),
        (lambda d: d.update(N_runs="many"), "N_runs='many'"),
        (lambda d: d.update(runs=[1, 2, 3]), "field 'runs' must be an object"),
        (lambda d: d.update(job_name="../../etc"), "job_name='../../etc'"),
        (lambda d: d.update(submitted_at="yesterday"), "must be an ISO-8601 time"),
        (lambda d: d.update(average_results=1), "average_results=1"),
    ],
)
def test_foreign_or_damaged_records_are_rejected_with_the_path(mutate, reason):
    data = record().to_json()
    mutate(data)
    with pytest.raises(CorruptFileError) as info:
        JobRecord.from_json(data, "/db/3_simulate/job.json")
    assert info.value.path == "/db/3_simulate/job.json"
    assert reason in info.value.reason


def test_a_json_list_is_not_a_record():
    with pytest.raises(CorruptFileError, match="expected a JSON object"):
        JobRecord.from_json([1, 2], "job.json")


def test_invalid_fields_fail_at_construction():
    with pytest.raises(TypeError, match="field 'options': must hold only JSON data"):
        record(options={"f": object()})
    with pytest.raises(ValueError, match="N_runs=0: must be at least 1"):
        record(N_runs=0)
    with pytest.raises(TypeError, match="field 'status'"):
        record(status="")


def test_code_parts_are_stored_and_optional_in_older_records():
    parts = {"code": "0123456789abcdef", "global OFFSET": "fedcba9876543210"}
    r = record(code_parts=parts)
    data = r.to_json()
    assert data["code_parts"] == parts
    assert JobRecord.from_json(data, "job.json") == r
    del data["code_parts"]  # a job.json written before parts were recorded
    older = JobRecord.from_json(data, "job.json")
    assert older.code_parts == {} and older.extra == {}
    assert new_record(key_of(1), "1_simulate", code_hash="x").code_parts == {}
    with pytest.raises(TypeError, match="field 'code_parts': must map part names to hex digests"):
        record(code_parts={"code": 1})


def test_arguments_are_stored_in_signature_order():
    def f(zeta, alpha, *rest, beta=2, **options):
        return zeta

    key = call_key(f, (1, "a, b=c", 3, 4), {"beta": 5, "x": [1, 2]}, N_runs=2)
    r = new_record(key, "1_f", code_hash="0" * 64)
    assert r.arguments_order == ["zeta", "alpha", "*rest", "beta", "**options"]
    data = r.to_json()
    assert data["arguments_order"] == r.arguments_order and sorted(data["arguments"]) == sorted(r.arguments_order)
    assert JobRecord.from_json(data, "job.json") == r
    with pytest.raises(CorruptFileError, match="'arguments_order'"):
        JobRecord.from_json({**data, "arguments_order": ["zeta", "alpha"]}, "job.json")


def test_records_written_before_the_order_take_it_from_their_call():
    def f(zeta, alpha, *rest, beta=2, **options):
        return zeta

    key = call_key(f, (1, "a, b=c", 3, 4), {"beta": 5, "x": [1, 2]}, N_runs=2)
    data = new_record(key, "1_f", code_hash="0" * 64).to_json()
    del data["arguments_order"]
    assert JobRecord.from_json(data, "job.json").arguments_order == ["zeta", "alpha", "*rest", "beta", "**options"]
    data["call"] = "f(zeta=1, alpha='a, b=c', *(3, 4), be...)"  # cut short: the rest follow sorted
    assert JobRecord.from_json(data, "job.json").arguments_order == ["zeta", "alpha", "*rest", "**options", "beta"]


def test_the_order_is_in_job_json_on_disk(tmp_path):
    def g(zeta, alpha):
        return zeta

    db = JobDatabase(tmp_path)
    key = call_key(g, (1, 2), N_runs=5)
    created, _ = db.get_or_create(key, lambda name: new_record(key, name, code_hash="0" * 64))
    stored = json.loads((db.job_dir(created) / "job.json").read_text())
    assert list(stored["arguments"]) == ["alpha", "zeta"] and stored["arguments_order"] == ["zeta", "alpha"]
    assert db.load(created.job_name).arguments_order == ["zeta", "alpha"]
