"""``/api/docs``: Swagger UI from the installed package's files, pointed at the OpenAPI
document, loading nothing from another site; and the pages for people left out of the
document. The package ships its templates and static files."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT, build_package

from jobapi import openapi


def test_the_docs_page_loads_swagger_ui_from_this_server_only(client):
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    urls = re.findall(r'(?:src|href|data-url)="([^"]+)"', page.text)
    assert "/api/docs/swagger-ui-bundle.js" in urls
    assert "/api/docs/swagger-ui.css" in urls
    assert "/static/apidocs.js" in urls
    assert "/static/apidocs.css" in urls
    assert "/api/openapi.json" in urls
    assert not [url for url in urls if re.match(r"[a-z]+:", url) and url != "data:,"]
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    # The script turns off Swagger UI's default call to a public validator.
    with client.get("/static/apidocs.js") as script:
        assert "validatorUrl: null" in script.text


def test_the_docs_page_has_the_consoles_bar_styled(client):
    page = client.get("/api/docs")
    bar = re.search(r'<header class="top">(.*?)</header>', page.text, re.DOTALL).group(1)
    assert re.findall(r'<a[^>]* href="([^"]+)"', bar) == ["/console/", "/console/", "/api/openapi.json"]
    with client.get("/static/apidocs.css") as style:
        assert style.status_code == 200 and style.mimetype == "text/css"
        rules = dict(re.findall(r"^([^{}\n/][^{}]*?)\s*\{([^}]*)\}", style.text, re.MULTILINE))
    assert "background" in rules["header.top"] and "color: #fff" in rules["header.top a"]


def test_swagger_ui_files_come_from_the_installed_package(client):
    import flask_swagger_ui

    shipped = Path(flask_swagger_ui.__file__).parent / "dist"
    with client.get("/api/docs/swagger-ui-bundle.js") as bundle:
        assert bundle.status_code == 200
        assert bundle.mimetype in ("text/javascript", "application/javascript")
        assert bundle.data == (shipped / "swagger-ui-bundle.js").read_bytes()
    with client.get("/api/docs/swagger-ui.css") as style:
        assert style.mimetype == "text/css"
    # Nothing else of the package, and nothing outside it.
    for name in ("oauth2-redirect.html", "..%2Fflask_swagger_ui.py", "index.template.html"):
        answer = client.get(f"/api/docs/{name}")
        assert answer.status_code == 404
        assert answer.get_json()["id"] == "not_found"


def test_pages_for_people_are_left_out_of_the_document(app, client):
    document = client.get("/api/openapi.json").get_json()
    assert not [path for path in document["paths"] if path.startswith(("/console", "/api/docs")) or path == "/"]
    assert "not part of the API" in document["info"]["description"]
    left_out = {rule.endpoint for rule in app.url_map.iter_rules() if not openapi.part_of_the_api(rule.endpoint)}
    assert left_out == {
        "static", "index", "apidocs.docs", "apidocs.swagger_ui_file",
        *(endpoint for endpoint in app.view_functions if endpoint.startswith(("console.", "virtool42."))),
    }
    # Virtool's 42.x dialect is served beside the API, under its own contract.
    assert not [path for path in document["paths"] if path.startswith("/virtool42")]
    assert "/virtool42" in document["info"]["description"]
    assert all(openapi.part_of_the_api(endpoint) for endpoint in ("jobs.get_job", "jobs.push_status", "openapi.document"))


def test_the_package_ships_its_templates_and_static_files(tmp_path):
    package = build_package(tmp_path) / "jobapi"
    source = ROOT / "src" / "jobapi"
    for folder in ("templates", "static"):
        expected = sorted(str(p.relative_to(source)) for p in (source / folder).rglob("*") if p.is_file())
        shipped = sorted(str(p.relative_to(package)) for p in (package / folder).rglob("*") if p.is_file())
        assert expected and shipped == expected
