"""The reference for the benchmark: a bare Flask app answering a constant job document.

It is served by the same gunicorn, with the same gunicorn.conf.py and
settings, as jobapi, and answers ``GET /api/jobs/<job_id>`` with the
document of a 5-record job that run.py fetched from jobapi (same keys, same
size), read once at start-up from the file named by BENCH_REFERENCE_DOCUMENT.
No database, no authentication, no schema: the framework's ceiling.

    BENCH_REFERENCE_DOCUMENT=doc.json gunicorn -c gunicorn.conf.py --pythonpath benchmarks reference_app:app
"""

import json
import os

from flask import Flask

app = Flask(__name__)
# jobapi keeps keys in document order too.
app.json.sort_keys = False

with open(os.environ["BENCH_REFERENCE_DOCUMENT"], encoding="utf-8") as file:
    DOCUMENT = json.load(file)


@app.get("/api/jobs/<job_id>")
def get_job(job_id: str):
    """The constant document, serialised per request as a Flask view returning a dict does."""
    return DOCUMENT
