"""The checkout's own tooling: what make's targets install and run, the one line a test run
ends with for the tools it missed, and its check that a run leaves the checkout as it was."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, require_program

NOT_TESTED = "Not tested for want of a tool"


def make_dry_run(target: str, tmp_path: Path) -> str:
    """The commands ``make TARGET`` would run on a fresh clone (a virtualenv not made yet)."""
    make = require_program("make", "the Makefile's targets")
    ran = subprocess.run(
        [make, "--dry-run", "--always-make", target, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_make_serve_installs_no_test_packages(tmp_path):
    serve = make_dry_run("serve", tmp_path)
    assert "pip install --quiet -e .\n" in serve
    assert "[test]" not in serve and "-m pytest" not in serve
    assert "gunicorn wsgi:app" in serve


def test_make_test_installs_the_test_packages_and_runs_both_halves(tmp_path):
    test = make_dry_run("test", tmp_path)
    assert "pip install --quiet -e '.[test]'" in test
    assert "env -u TEST_DATABASE_URL MISSING_TOOLS_FILE='build/missing-tools'" in test
    assert "TEST_DATABASE_URL='postgresql+psycopg://postgres@127.0.0.1:5432/jobapi_test'" in test


def test_make_screenshots_asks_for_docs_screenshots(tmp_path):
    screenshots = make_dry_run("screenshots", tmp_path)
    assert "SCREENSHOTS_DIR=docs/screenshots" in screenshots and "tests/test_console_browser.py" in screenshots
    # Otherwise the browser tests save them in build/, which git ignores.
    ignored = subprocess.run(["git", "check-ignore", "-q", "build/screenshots/console-jobs.png"], cwd=ROOT)
    assert ignored.returncode == 0


@pytest.fixture
def suite(tmp_path) -> Path:
    """A small checkout of its own: this suite's conftest.py and the tests each test writes."""
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    return tmp_path


def run_suite(
    folder: Path, ci: bool = False, record: Path | None = None, screenshots: str | None = None
) -> subprocess.CompletedProcess:
    env = {
        key: value for key, value in os.environ.items() if key not in ("CI", "MISSING_TOOLS_FILE", "SCREENSHOTS_DIR")
    }
    if screenshots is not None:
        env["SCREENSHOTS_DIR"] = screenshots
    env.pop("TEST_DATABASE_URL", None)
    if ci:
        env["CI"] = "true"
    if record is not None:
        env["MISSING_TOOLS_FILE"] = str(record)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", str(folder / "tests")],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )


MISSING = """
import pytest
from conftest import require_program, skip_without

def test_a():
    require_program("no-such-program-a", "area one", "package-a")

def test_b():
    skip_without("no-such-tool-b", "area two")

def test_c():
    require_program("no-such-program-a", "area three", "package-a")

def test_d():
    pytest.skip("a reason of another kind")

def test_e():
    pass
"""


def test_one_line_names_every_area_skipped_for_a_missing_tool(suite):
    (suite / "tests" / "test_missing.py").write_text(MISSING)
    ran = run_suite(suite)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = [line for line in ran.stdout.splitlines() if line.startswith(NOT_TESTED)]
    assert lines == [
        f"{NOT_TESTED} (no-such-program-a: area one, area three; no-such-tool-b: area two); "
        "apt-get install -y package-a no-such-tool-b"
    ]
    assert "a reason of another kind" in ran.stdout  # pytest's own summary still lists every skip


def test_the_line_of_a_later_run_names_what_an_earlier_one_missed(suite, tmp_path):
    record = tmp_path / "missing-tools"
    (suite / "tests" / "test_missing.py").write_text(MISSING)
    assert run_suite(suite, record=record).returncode == 0
    (suite / "tests" / "test_missing.py").write_text(
        "from conftest import skip_without\n\ndef test_f():\n    skip_without('no-such-tool-c', 'area four')\n"
    )
    ran = run_suite(suite, record=record)
    lines = [line for line in ran.stdout.splitlines() if line.startswith(NOT_TESTED)]
    assert lines == [
        f"{NOT_TESTED} (no-such-program-a: area one, area three; no-such-tool-b: area two; "
        "no-such-tool-c: area four); apt-get install -y package-a no-such-tool-b no-such-tool-c"
    ]


def test_under_ci_a_missing_tool_fails(suite):
    (suite / "tests" / "test_missing.py").write_text(MISSING)
    ran = run_suite(suite, ci=True)
    assert ran.returncode == 1
    assert "3 failed" in ran.stdout and NOT_TESTED not in ran.stdout
    assert "no-such-program-a is not installed (apt-get install package-a), and CI must test area one" in ran.stdout


def test_a_run_that_changes_the_checkout_says_so_and_fails_under_ci(suite):
    git = require_program("git", "the check that a test run leaves the checkout as it was")
    subprocess.run([git, "init", "-q"], cwd=suite, check=True)
    (suite / "tests" / "test_writes.py").write_text(
        "from conftest import ROOT\n\ndef test_writes():\n    (ROOT / 'left-behind.txt').write_text('x')\n"
    )
    ran = run_suite(suite)
    assert ran.returncode == 0, ran.stdout
    assert "The run changed the checkout" in ran.stdout and "left-behind.txt" in ran.stdout
    (suite / "left-behind.txt").unlink()
    assert run_suite(suite, ci=True).returncode == 1
    (suite / "left-behind.txt").unlink()
    # What make screenshots asks for, in the folder it names, is no surprise.
    (suite / "tests" / "test_writes.py").write_text(
        "from conftest import ROOT\n\ndef test_saves():\n"
        "    (ROOT / 'docs' / 'shots').mkdir(parents=True)\n    (ROOT / 'docs' / 'shots' / 'a.png').write_bytes(b'x')\n"
    )
    asked = run_suite(suite, ci=True, screenshots="docs/shots")
    assert asked.returncode == 0 and "changed the checkout" not in asked.stdout
    (suite / "tests" / "test_writes.py").write_text("def test_writes_nothing():\n    pass\n")
    clean = run_suite(suite, ci=True)
    assert clean.returncode == 0 and "changed the checkout" not in clean.stdout


def test_the_quick_start_installs_what_ci_installs():
    """Every Debian package .ci/run installs for the tests is in the Quick start's one line."""
    readme = (ROOT / "README.rst").read_text()
    quick_start = readme[readme.index("Quick start\n-----------"):readme.index("Your first job\n")]
    [line] = re.findall(r"``apt-get install -y ([^`]+)``", quick_start)
    listed = set(line.split())
    installed = set()
    for command in re.findall(r"apt-get install ([^\n;&|]+)", (ROOT / ".ci" / "run").read_text()):
        installed |= {word for word in command.split() if not word.startswith("-")}
    assert installed and installed <= listed, installed - listed
    # And Quick start is still two commands.
    block = quick_start[quick_start.index("::\n\n") + 4:].split("\n\n")[0]
    assert [line.split()[:2] for line in block.splitlines()] == [["make", "serve"], ["make", "test"]]
