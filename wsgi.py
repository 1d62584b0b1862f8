"""The WSGI entry point: ``gunicorn wsgi:app``."""

from jobapi import create_app

app = create_app()
