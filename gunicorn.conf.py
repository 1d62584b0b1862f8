"""gunicorn defaults for jobapi: ``gunicorn wsgi:app`` reads this file from the repository root.

Every setting can be overridden by the environment variable named beside it.
"""

import multiprocessing
import os

bind = os.environ.get("BIND", "127.0.0.1:8000")

# Threads release the GIL while they wait on the database, so a few threads
# per process serve more requests than processes alone, at less memory.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", 4))

# One pooled database connection per thread, so no thread waits for another's.
os.environ.setdefault("DB_POOL_SIZE", str(threads))

# A request blocked longer than this is killed and its worker replaced; the
# database answers (or times out) well within it.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
graceful_timeout = 20
keepalive = 5

# Several servers may run on one machine (tests, benchmarks): no shared
# control socket in the home directory.
control_socket_disable = True

accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
