"""The docs that are generated from the code must match it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_doc_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_doc.py"), "--check"], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()


def test_readme_opens_with_make_run_and_make_test():
    text = (ROOT / "README.md").read_text()
    block = text.split("```", 2)[1]
    assert "make run" in block and "make test" in block
