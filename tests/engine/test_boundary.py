"""The engine is plain Python: importing every engine module loads neither Django nor the platform."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import feedback_loop.engine

ROOT = Path(__file__).resolve().parents[2]


def test_engine_modules_import_without_django_or_the_platform():
    modules = sorted(
        info.name
        for info in pkgutil.walk_packages(feedback_loop.engine.__path__, prefix="feedback_loop.engine.")
        if not info.name.endswith("__main__")
    )
    assert len(modules) > 5
    script = "\n".join(
        [
            "import importlib, sys",
            *[f"importlib.import_module({name!r})" for name in modules],
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'django', 'rest_framework', 'celery', 'annotation', 'config'})",
            "print(','.join(bad))",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    assert result.stdout.strip() == "", f"the engine pulled in: {result.stdout.strip()}"
