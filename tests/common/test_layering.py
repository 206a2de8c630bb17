"""The layering holds in fact, not only on paper: importing all of ``common`` pulls in no upper layer and no UI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

FORBIDDEN = ("cli", "client", "server", "simulations", "typer", "rich", "click")


def test_importing_every_common_module_loads_no_upper_layer_and_no_terminal_ui():
    script = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        import common
        names = [m.name for m in pkgutil.walk_packages(common.__path__, "common.")]
        for name in names:
            importlib.import_module(name)
        loaded = sorted({{key.split(".")[0] for key in sys.modules}} & set({FORBIDDEN!r}))
        print(json.dumps({{"modules": len(names), "loaded": loaded}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(result.stdout)
    assert report["modules"] > 30  # every module of the bottom layer was really imported
    assert report["loaded"] == [], f"common pulled in {report['loaded']}"


def test_the_check_would_see_a_forbidden_import():
    # The probe itself must be able to fail: importing a module that pulls in typer is seen.
    script = "import sys, cli.display; print('rich' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "True"
