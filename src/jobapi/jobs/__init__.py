"""The jobs blueprint: jobs read themselves, push status and send heartbeats; operators
make, list, cancel and remove jobs; runners claim queued work."""

from flask import Blueprint
from werkzeug.routing import BaseConverter

from ..auth import add_job_state, authenticate


class JobIdConverter(BaseConverter):
    """A job id in a path: any segment but the fixed routes beside it (``/api/jobs/claim``),
    so that ``GET /api/jobs/claim`` is 405, not a read of a job named "claim"."""

    # Excluded in the pattern itself, so that every use of the URL map agrees
    # (matching, and the Allow header it computes for OPTIONS and 405).
    regex = r"(?!claim(?:/|$))[^/]+"


bp = Blueprint("jobs", __name__)
bp.record_once(lambda state: state.app.url_map.converters.setdefault("job_id", JobIdConverter))
bp.before_request(authenticate)
bp.after_request(add_job_state)

from . import views  # noqa: E402,F401  (registers the routes on bp)
