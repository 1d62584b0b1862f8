"""gunicorn defaults for jobapi: ``gunicorn wsgi:app`` reads this file from the repository root.

Every setting can be overridden by the environment variable named beside it.
"""

import multiprocessing
import os
import shutil
import tempfile

# Metrics in prometheus_client's multiprocess mode: every worker writes its
# values to files in this directory, and a scrape of any worker adds them
# all up. The variable must be set before a worker imports prometheus_client,
# hence here, in the master, as this file is read. A directory made here is
# fresh for this server, and removed when it exits; one given is used as is.
METRICS_DIRECTORY_MADE = "JOBAPI_METRICS_DIRECTORY_MADE"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="jobapi-metrics-")
    os.environ[METRICS_DIRECTORY_MADE] = os.environ["PROMETHEUS_MULTIPROC_DIR"]

bind = os.environ.get("BIND", "127.0.0.1:8000")

# Chosen by measurement (make bench, GET 5-record and POST spread over 64
# jobs, 16 connections, on a 2-core machine with PostgreSQL on it too):
# gthread workers x threads of 4x4, 2x4, 2x8 and 4 sync-like (4x1) were all
# within the machine's noise on GET (0.18-0.19 of the bare Flask reference),
# and 2x4 was best on POST (0.13 against 0.11). One process per core keeps
# the CPU for PostgreSQL and Python busy without processes fighting over it;
# threads release the GIL while they wait on the database. Fewer processes
# also mean half the memory and half the database connections of 4x4.
# gthread's threads, but each request is read whole by the worker's event
# loop before a thread serves it, so slow or silent clients hold no thread,
# and gunicorn's own errors are JSON (see src/jobapi/serving.py).
worker_class = "jobapi.serving.BufferingWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", max(2, multiprocessing.cpu_count())))
threads = int(os.environ.get("GUNICORN_THREADS", 4))

# One pooled database connection per thread, so no thread waits for another's.
os.environ.setdefault("DB_POOL_SIZE", str(threads))

# A request blocked longer than this is killed and its worker replaced; the
# database answers (or times out) well within it.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
# On SIGTERM a worker stops accepting, finishes the requests it has, and
# exits; deploy/jobapi.service waits longer (TimeoutStopSec) before killing.
graceful_timeout = 20
# Seconds an idle connection is kept. Longer than the proxy's upstream
# keepalive_timeout (deploy/nginx.conf) and than the idle time of HTTP
# clients that pool connections (aiohttp's, in Virtool's workers, closes them
# after 15 s): the client, not gunicorn, closes an idle connection, so none
# sends a request on a connection gunicorn is closing. Idle connections wait
# in the worker's event loop, not in its threads.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 75))

# Only the proxy in front may say a request came over HTTPS: gunicorn sets
# wsgi.url_scheme from X-Forwarded-Proto when, and only when, the peer's
# address is listed here (comma-separated addresses or networks, or "*").
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# Only the header deploy/nginx.conf sets; gunicorn's other defaults
# (X-Forwarded-Ssl, X-Forwarded-Protocol) would let a client's own copy of
# them, passed through, contradict it and fail the request.
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}

# Several servers may run on one machine (tests, benchmarks): no shared
# control socket in the home directory.
control_socket_disable = True

accesslog = os.environ.get("ACCESS_LOG") or None
# Gathers a request's access log fields only when the access log would write them.
logger_class = "jobapi.serving.Logger"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")

# gunicorn's own lines in the app's format (LOG_FORMAT: text or json), on
# stderr with the app's one line per request. gunicorn's access log would
# repeat those lines, so it is off unless ACCESS_LOG names a file (or -).
import logging  # noqa: E402

from jobapi.logs import logging_config  # noqa: E402

# No line shows a record's thread or multiprocessing name: spare every record
# looking them up (the logging module's own advice on speed).
logging.logThreads = False
logging.logMultiprocessing = False

logconfig_dict = logging_config(os.environ.get("LOG_FORMAT"), loglevel, accesslog)


def child_exit(server, worker):
    """A worker has exited: its live values leave the metrics (its counts stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """The server stops: remove the metrics directory it made."""
    made = os.environ.get(METRICS_DIRECTORY_MADE)
    if made and made == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(made, ignore_errors=True)
