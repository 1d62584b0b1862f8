"""The jobs blueprint: a job reads itself and pushes its status."""

from flask import Blueprint

from ..auth import authenticate_job

bp = Blueprint("jobs", __name__)
bp.before_request(authenticate_job)

from . import views  # noqa: E402,F401  (registers the routes on bp)
