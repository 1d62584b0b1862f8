"""Building jobapi (its metadata and dependencies are in setup.cfg).

Alembic's folder stays at the repository root as migrations/, where
``jobapi db migrate`` writes new revisions. A build copies it into the
package as ``jobapi/migrations``, so a regular install (``pip install .``)
finds it there; a checkout or an editable install finds it beside src/.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MIGRATIONS = "migrations"


class BuildPyWithMigrations(build_py):
    """setuptools' build_py, then migrations/ copied into the built package (not for an
    editable install, which builds no package)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source in sorted(Path(MIGRATIONS).rglob("*")):
            if source.is_file() and "__pycache__" not in source.parts:
                target = Path(self.build_lib, "jobapi", source)
                self.mkpath(str(target.parent))
                self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildPyWithMigrations})
