"""The benchmark harness's own parts: scenario keys, the nginx site rendering, the profile's categories,
wrk's output, and the wrk scripts' promises (no job in flight on two connections; a counted run ends early)."""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from conftest import ROOT, require_program, skip_without

sys.path.insert(0, str(ROOT / "benchmarks"))

import nginx_proxy  # noqa: E402
import pgbouncer_proxy  # noqa: E402
import processes  # noqa: E402
import profiling  # noqa: E402
import run  # noqa: E402
from seeding import SeededJob  # noqa: E402

# Scenario keys ---------------------------------------------------------------


def test_default_run_has_every_key_but_the_curve():
    assert run.select_keys(None) == frozenset(run.SCENARIOS) - {"curve"}
    assert "curve" in run.select_keys(None, curve=True)


def test_only_brings_the_rows_a_row_is_compared_with():
    assert run.select_keys("get5") == {"get5", "reference", "yardstick_get5"}
    assert run.select_keys("post_10000") == {"post_10000", "post_1"}
    assert run.select_keys("sqlite") == {"sqlite_get5", "sqlite_post_spread", "reference"}
    assert run.select_keys("curve") == {"curve"}


def test_unknown_key_is_an_error_naming_the_valid_keys(capsys):
    with pytest.raises(ValueError, match="unknown scenario key\\(s\\): gett5.*valid keys: reference, .*get5"):
        run.select_keys("get5,gett5")
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--only", "gett5"])
    assert exit_info.value.code == 2
    assert "gett5" in capsys.readouterr().err


def test_curve_levels_are_positive_connection_counts(capsys):
    assert run.parser().parse_args(["--levels", "1,8,32"]).levels == [1, 8, 32]
    for bad in ("0,16", "a", ""):
        with pytest.raises(SystemExit):
            run.parser().parse_args(["--levels", bad])
    assert "--levels" in capsys.readouterr().err


def test_help_lists_every_scenario_key(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    out = capsys.readouterr().out
    for key in run.SCENARIOS:
        assert re.search(rf"^\s+{key}\s", out, re.MULTILINE), key


# The nginx site --------------------------------------------------------------

SITE = """\
# upstream jobapi { server 10.0.0.1:1; }  a comment is no block
upstream jobapi {
    server 127.0.0.1:8000 max_fails=0;
    server 127.0.0.1:8001 max_fails=0;
    keepalive 32;
}
server {
    listen 80 backlog=4096;
    listen [::]:80;
    access_log /var/log/nginx/jobapi.access.log combined;
    error_page 413 = @too_large;
    location @too_large { return 413 '{"id": "payload_too_large", "message": "Payload too large"}'; }
    location / { proxy_pass http://jobapi; }
}
"""


def test_site_points_at_the_servers_under_test(tmp_path):
    rendered = nginx_proxy.render_site(SITE, [5001, 5002], 6000, tmp_path)
    upstream = rendered[rendered.index("\nupstream jobapi {"):]
    upstream = upstream[:upstream.index("}")]
    assert re.findall(r"server (\S+?)( max_fails=0)?;", upstream) == [
        ("127.0.0.1:5001", " max_fails=0"), ("127.0.0.1:5002", " max_fails=0")]
    assert "keepalive 32;" in upstream
    assert re.findall(r"listen [^;]*;", rendered) == ["listen 127.0.0.1:6000 backlog=4096;"]
    assert f"access_log {tmp_path / 'jobapi.access.log'} combined;" in rendered
    # Quoted braces and comments are left alone.
    assert "return 413 '{\"id\": \"payload_too_large\", \"message\": \"Payload too large\"}';" in rendered
    assert rendered.startswith("# upstream jobapi { server 10.0.0.1:1; }")


@pytest.mark.parametrize("site", ["server { listen 80; }", SITE + "\nupstream jobapi { server 127.0.0.1:9; }"])
def test_site_needs_exactly_one_jobapi_upstream(site, tmp_path):
    with pytest.raises(nginx_proxy.ProxyError, match="exactly one"):
        nginx_proxy.render_site(site, [5001], 6000, tmp_path)


# Where the time goes -----------------------------------------------------------

PACKAGES = "/srv/.venv/lib/python3.11/site-packages"


def frames(*names: str) -> list[str]:
    return [f"{function} ({path}:1)" for function, path in (name.split("@") for name in names)]


@pytest.mark.parametrize(("stack", "category"), [
    (frames(f"run@{PACKAGES}/gunicorn/workers/gthread.py", f"wsgi_app@{PACKAGES}/flask/app.py",
            "authenticate@/srv/src/jobapi/auth.py", f"get@{PACKAGES}/sqlalchemy/orm/session.py",
            f"execute@{PACKAGES}/psycopg/cursor.py"), "psycopg/network"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "authenticate@/srv/src/jobapi/auth.py",
            f"get@{PACKAGES}/sqlalchemy/orm/session.py"), "SQLAlchemy"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "_authenticate_job@/srv/src/jobapi/auth.py",
            "verify_job_key@/srv/src/jobapi/keys.py", "new@/usr/lib/python3.11/hashlib.py"), "auth"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "push_status@/srv/src/jobapi/jobs/views.py",
            f"load@{PACKAGES}/marshmallow/schema.py", f"_deserialize@{PACKAGES}/marshmallow/fields.py"),
     "validation"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "json_object@/srv/src/jobapi/payload.py",
            "loads@/usr/lib/python3.11/json/__init__.py"), "validation"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", f"response@{PACKAGES}/flask/json/provider.py",
            "dumps@/usr/lib/python3.11/json/__init__.py", "encode@/usr/lib/python3.11/json/encoder.py"),
     "serialization"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "get_job@/srv/src/jobapi/jobs/views.py",
            "job_document@/srv/src/jobapi/jobs/documents.py"), "serialization"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "_observe_request@/srv/src/jobapi/observability.py",
            "info@/usr/lib/python3.11/logging/__init__.py"), "logging"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "_observe_request@/srv/src/jobapi/observability.py",
            "observe_request@/srv/src/jobapi/metrics.py", f"inc@{PACKAGES}/prometheus_client/metrics.py"),
     "metrics"),
    (frames(f"run@{PACKAGES}/gunicorn/workers/gthread.py", f"handle@{PACKAGES}/gunicorn/workers/gthread.py"),
     "gunicorn"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", f"match@{PACKAGES}/werkzeug/routing/map.py"), "Flask/werkzeug"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "push_status@/srv/benchmarks/yardstick_app.py",
            "validate_push@/srv/benchmarks/yardstick_app.py"), "validation"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "lock_job@/srv/src/jobapi/jobs/service.py"), "other"),
    (frames(f"wsgi_app@{PACKAGES}/flask/app.py", "end_transaction@/srv/src/jobapi/transaction.py"), "SQLAlchemy"),
])
def test_profile_categories(stack, category):
    assert profiling.categorize(stack) == category


def test_category_table_from_py_spy_raw_output(tmp_path):
    raw = tmp_path / "profile.txt"
    psycopg = ";".join(frames(f"wsgi_app@{PACKAGES}/flask/app.py", f"execute@{PACKAGES}/psycopg/cursor.py"))
    auth = ";".join(frames(f"wsgi_app@{PACKAGES}/flask/app.py", "verify_job_key@/srv/src/jobapi/keys.py"))
    raw.write_text(f"{psycopg} 30\n{auth} 10\n")
    counts = profiling.categories([raw])
    assert counts == {"psycopg/network": 30, "auth": 10}
    table = profiling.category_table({"GET jobapi": counts})
    assert re.search(r"^psycopg/network\s+75\.0 %$", table, re.MULTILINE)
    assert re.search(r"^auth\s+25\.0 %$", table, re.MULTILINE)
    assert re.search(r"^samples\s+40$", table, re.MULTILINE)


# wrk ---------------------------------------------------------------------------

BENCH_LINE = ("BENCH requests=100 duration_us=2000000 p50_us=1000 p90_us=2000 p99_us=3000 max_us=4000 non2xx=2 "
              "codes=409:2 connect_errors=0 read_errors=1 write_errors=0 timeouts=3 shared=4\n"
              "BENCH_FIRST_ERROR 409 {\"id\": \"conflict\"}\n")


def test_wrk_output_is_parsed():
    result = processes.parse_wrk("Running 2s test\n" + BENCH_LINE)
    assert (result.requests, result.rps, result.p99_us, result.non2xx, result.codes) == (100, 50.0, 3000, 2, "409:2")
    assert (result.socket_errors, result.shared, result.first_error) == (4, 4, '409 {"id": "conflict"}')
    with pytest.raises(processes.BenchError, match="no p99_us"):
        processes.parse_wrk(BENCH_LINE.replace(" p99_us=3000", ""))


@pytest.mark.parametrize(("connections", "threads"), [(1, 1), (16, 16), (64, 16), (256, 16), (24, 12)])
def test_wrk_threads_divide_the_connections(connections, threads):
    assert processes.wrk_threads(connections) == threads


@pytest.fixture(scope="module")
def wrk_binary() -> str:
    return require_program("wrk", "the benchmarks' wrk scripts")


class JobServer(ThreadingHTTPServer):
    """Answers pushes as jobapi would (the record, naming the stage), and notes any job in flight twice."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _JobHandler)
        self.lock = threading.Lock()
        self.in_flight: set[str] = set()
        self.overlaps = 0
        self.pushes: dict[str, int] = {}

    def handle_error(self, request, client_address) -> None:
        pass  # wrk resets its connections when it stops


class _JobHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        server: JobServer = self.server
        job_id = self.path.split("/")[3]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            if job_id in server.in_flight:
                server.overlaps += 1
            server.in_flight.add(job_id)
            server.pushes[job_id] = server.pushes.get(job_id, 0) + 1
        # A few slow answers: meanwhile the thread's other connections go round its jobs many times.
        time.sleep(0.1 if random.random() < 0.03 else random.random() * 0.002)
        with server.lock:
            server.in_flight.discard(job_id)
        answer = json.dumps({"state": body["state"], "stage": body["stage"], "error": None,
                             "progress": body["progress"], "timestamp": "2026-01-01T00:00:00.000000Z"},
                            separators=(",", ":")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def job_server():
    server = JobServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _jobs(count: int) -> list[SeededJob]:
    return [SeededJob(id=f"job{i:05d}", key="0" * 64) for i in range(count)]


def test_posts_keep_each_job_on_one_connection_at_a_time(wrk_binary, job_server, tmp_path, monkeypatch):
    """16 connections on 2 threads, as many jobs: no job is ever pushed twice at once."""
    wrk = processes.Wrk(wrk_binary, tmp_path / "wrk.log")
    url = f"http://127.0.0.1:{job_server.server_address[1]}"
    jobs = _jobs(16)
    command = wrk.command(url, "post.lua", 3, jobs, 16)
    assert command[1:3] == ["-t16", "-c16"]
    monkeypatch.setattr(processes, "MAX_WRK_THREADS", 2)
    result = wrk.run(url, "post.lua", 3, jobs, 16)
    assert "-t2 -c16" in (tmp_path / "wrk.log").read_text()
    assert result.requests > 50 and result.non2xx == 0 and result.socket_errors == 0
    assert result.shared == 0
    assert job_server.overlaps == 0
    assert set(job_server.pushes) == {job.id for job in jobs}


def test_counted_run_ends_when_its_requests_are_done(wrk_binary, job_server, tmp_path):
    wrk = processes.Wrk(wrk_binary, tmp_path / "wrk.log")
    url = f"http://127.0.0.1:{job_server.server_address[1]}"
    started = time.monotonic()
    result = wrk.run_count(url, "post.lua", 400, _jobs(64), 16, timeout=60)
    # wrk itself was told to run for 65 s; the run ends once every thread has sent its share.
    assert time.monotonic() - started < 30
    assert 400 <= result.requests < 2000
    assert sum(job_server.pushes.values()) >= 400


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    return nginx_proxy.find_nginx() or skip_without("nginx", "the benchmarks' nginx proxy")


def test_nginx_proxy_serves_the_site_in_front_of_a_server(nginx_binary, job_server, tmp_path):
    site = tmp_path / "site.conf"
    site.write_text(SITE)
    proxy = nginx_proxy.NginxProxy("nginx-test", nginx_binary, tmp_path / "nginx", [job_server.server_address[1]],
                                   site=site)
    proxy.start()
    try:
        answer = requests.post(f"{proxy.url}/api/jobs/job00001/status", timeout=10,
                               json={"state": "running", "stage": "bench-job00001", "progress": 5})
        assert answer.status_code == 200
        assert answer.json()["stage"] == "bench-job00001"
        assert job_server.pushes == {"job00001": 1}
    finally:
        proxy.stop()
    assert proxy.process is None
    # The site's access log went to the run's directory, not to /var/log.
    assert "POST /api/jobs/job00001/status" in (tmp_path / "nginx" / "jobapi.access.log").read_text()


# PgBouncer -------------------------------------------------------------------


def test_pgbouncer_rows_come_with_their_direct_pairs():
    assert run.select_keys("pgbouncer_get5") == {"pgbouncer_get5", "direct_get5", "unprepared_get5"}
    assert run.select_keys("unprepared_post") == {"unprepared_post", "direct_post"}
    assert set(run.GROUPS["pgbouncer"]) <= run.select_keys(None)


def test_pgbouncer_ini_keeps_its_settings_and_takes_the_runs_own_places(tmp_path):
    text = pgbouncer_proxy.INI.read_text()
    rendered = pgbouncer_proxy.render_ini(text, "host=/tmp/s port=5 dbname=x", 6543, tmp_path,
                                          {"default_pool_size": "3"})
    settings = dict(re.findall(r"^(\w+) = (.*)$", rendered, re.MULTILINE))
    assert settings["jobapi"] == "host=/tmp/s port=5 dbname=x"
    assert (settings["listen_addr"], settings["listen_port"]) == ("127.0.0.1", "6543")
    assert settings["auth_type"] == "trust" and settings["logfile"] == str(tmp_path / "pgbouncer.log")
    assert settings["default_pool_size"] == "3"
    # Everything else as the file has it, each setting once.
    assert settings["pool_mode"] == "transaction"
    assert settings["query_wait_timeout"] == re.search(r"^query_wait_timeout = (.*)$", text, re.MULTILINE).group(1)
    assert len(re.findall(r"^listen_port =", rendered, re.MULTILINE)) == 1
    assert rendered.count("[pgbouncer]") == 1
    with pytest.raises(pgbouncer_proxy.PgBouncerError):
        pgbouncer_proxy.render_ini(text + "\n[databases]\njobapi = host=other\n", "x", 1, tmp_path)
