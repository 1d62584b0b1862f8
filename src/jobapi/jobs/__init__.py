"""The jobs blueprint: a job reads itself, pushes its status and sends heartbeats."""

from flask import Blueprint

from ..auth import add_job_state, authenticate_job

bp = Blueprint("jobs", __name__)
bp.before_request(authenticate_job)
bp.after_request(add_job_state)

from . import views  # noqa: E402,F401  (registers the routes on bp)
