"""The jobs blueprint: jobs read themselves, push status and send heartbeats; operators
make, list, cancel and remove jobs; runners claim queued work."""

from flask import Blueprint

from ..auth import add_job_state, authenticate

bp = Blueprint("jobs", __name__)
bp.before_request(authenticate)
bp.after_request(add_job_state)

from . import views  # noqa: E402,F401  (registers the routes on bp)
