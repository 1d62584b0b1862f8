"""A fake three-stage job worker built on jobapi's client: run it with a job's id and key.

    python examples/worker.py --url http://127.0.0.1:8000 --job-id ID --key KEY
    JOBAPI_URL=... JOB_ID=... JOB_KEY=... python examples/worker.py

The URL is the service's root or its API's (``http://127.0.0.1:8000/api``); one that
leads elsewhere stops the worker with a line saying what answered there.

It reads its job, pushes ``running`` with the stage and progress as it
enters each stage, pings while it works, and pushes ``complete`` at the end.
If an operator cancels the job it stops at its next call to the service and
exits with status 3. A failure of its own work is pushed as ``error``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from jobapi.client import JobAPIError, JobCancelled, JobClient

# (stage, progress on entering it)
STAGES = (("mk_subtraction_dir", 0), ("bowtie_build", 30), ("set_stats", 80))
PINGS_PER_STAGE = 5
EXIT_CANCELLED = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("JOBAPI_URL", "http://127.0.0.1:8000"),
        help="the service's root URL or its API's (ending in /api); default JOBAPI_URL, else %(default)s",
    )
    parser.add_argument("--job-id", default=os.environ.get("JOB_ID"))
    parser.add_argument("--key", default=os.environ.get("JOB_KEY"))
    parser.add_argument(
        "--stage-seconds", type=float, default=2.0, help="how long each fake stage works"
    )
    args = parser.parse_args(argv)
    if not args.job_id or not args.key:
        parser.error("give --job-id and --key (or JOB_ID and JOB_KEY)")
    return args


def work(stage: str, seconds: float, client: JobClient) -> None:
    """Pretend to work on a stage, sending a heartbeat every so often."""
    for _ in range(PINGS_PER_STAGE):
        time.sleep(seconds / PINGS_PER_STAGE)
        client.ping()


def run(client: JobClient, stage_seconds: float) -> None:
    job = client.get()
    print(f"job {job['id']}: {job['task']} {job['args']}", flush=True)
    for stage, progress in STAGES:
        client.push("running", stage, progress)
        print(f"  {stage} ({progress}%)", flush=True)
        try:
            work(stage, stage_seconds, client)
        except JobAPIError:
            raise
        except Exception as error:  # the job's own failure, not the service's
            client.push("error", stage, progress, error=f"{type(error).__name__}: {error}")
            raise
    client.push("complete", "done", 100)
    print("complete", flush=True)


def report_retry(method: str, url: str, reason: str) -> None:
    """Say on stderr that a call to the service is being tried again, and why."""
    print(f"retrying {method} {url}: {reason}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with JobClient(args.url, args.job_id, args.key, on_retry=report_retry) as client:
        try:
            run(client, args.stage_seconds)
        except JobCancelled:
            print(f"job {args.job_id} was cancelled; stopping", file=sys.stderr, flush=True)
            return EXIT_CANCELLED
        except JobAPIError as error:
            print(f"job {args.job_id}: {error}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
