"""jobapi's imports run down its layers (setup.cfg's import-linter contract), form no cycle,
and name no module the contract leaves out. Imports inside functions count as any other."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
CONTRACT = "importlinter:contract:layers"


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("jobapi", include_external_packages=False, cache_dir=None)


@pytest.fixture(scope="module")
def contract() -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    return config[CONTRACT]


def test_the_layers_contract_is_kept():
    # The command, in a process of its own: it configures logging as it starts.
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--config", str(SETUP_CFG), "--no-cache"],
        capture_output=True, text=True, timeout=120,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "1 kept, 0 broken" in lint.stdout


def test_at_most_three_imports_run_back_up(contract):
    ignored = [line for line in contract.get("ignore_imports", "").splitlines() if line.strip()]
    assert len(ignored) <= 3, ignored


def test_no_import_cycle(graph):
    cycles = [
        (importer, imported)
        for importer in sorted(graph.modules)
        for imported in sorted(graph.find_modules_directly_imported_by(importer))
        if graph.chain_exists(importer=imported, imported=importer)
    ]
    assert cycles == []


def test_no_module_imports_a_package_that_holds_it(graph):
    # A package's __init__ importing its modules (create_app does) and a module importing
    # the package back would be a cycle the layers cannot see.
    for package in ("jobapi", "jobapi.jobs", "jobapi.console", "jobapi.storage", "jobapi.virtool42"):
        inside = {module for module in graph.find_modules_that_directly_import(package) if module.startswith(package + ".")}
        assert inside == set(), package


def test_every_module_has_a_layer(graph, contract):
    named = {name for line in contract["layers"].splitlines() for name in re.split(r"[|:\s]+", line) if name}
    outside = sorted(
        module for module in graph.modules
        if module not in ("jobapi", "jobapi.jobs")
        and not any(module == name or module.startswith(name + ".") for name in named)
    )
    assert outside == [], "modules setup.cfg's layers leave out: " + ", ".join(outside)
