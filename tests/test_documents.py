"""The hot paths build documents directly; they must be exactly what the schemas dump."""

from __future__ import annotations

from jobapi.extensions import db
from jobapi.jobs import service
from jobapi.models import Job
from jobapi.jobs.documents import job_document, status_document
from jobapi.jobs.schemas import job_out_schema, status_out_schema


def test_job_document_matches_schema(app, client, make_job):
    job = make_job(args={"ref": "hg38", "n": [1, 2]}, proc=3, mem=5)
    for body in (
        {"state": "running", "stage": "", "progress": 0},
        {"state": "running", "stage": "align", "progress": "55"},
        {"state": "error", "stage": "align", "progress": 55, "error": "disk full"},
    ):
        assert client.post(f"/api/jobs/{job.id}/status", json=body, headers=job.auth).status_code == 200
    with app.app_context():
        stored = db.session.get(Job, job.id)
        expected = job_out_schema.dump(stored)
        found = service.read_job(db.session.connection(), job.id)
        assert job_document(found.job, found.history) == expected
        assert [status_document(r) for r in stored.statuses] == [status_out_schema.dump(r) for r in stored.statuses]
        assert len(expected["status"]) == 4
    served = client.get(f"/api/jobs/{job.id}", headers=job.auth).json
    assert served == expected


def test_what_orjson_cannot_write_is_written_by_flask(client, make_job):
    # orjson stops at 64-bit integers; JSON (and a job's args) does not.
    job = make_job(args={"seed": 2**70, "name": "Zoë"})
    response = client.get(f"/api/jobs/{job.id}", headers=job.auth)
    assert response.status_code == 200
    assert response.json["args"] == {"seed": 2**70, "name": "Zoë"}
    assert response.data.endswith(b"\n")


def test_answers_are_written_by_orjson(client, job, monkeypatch):
    import orjson

    calls = []
    real = orjson.dumps
    monkeypatch.setattr(orjson, "dumps", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 200
    assert calls
