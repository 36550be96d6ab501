"""docs/deploy.md: its systemd units are valid (systemd-analyze verify) and run this node."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = "/opt/seamless-node/bin/seamless-node"


def units() -> list[str]:
    text = (ROOT / "docs" / "deploy.md").read_text()
    return [b for b in re.findall(r"```ini\n(.*?)```", text, re.DOTALL) if b.startswith("[Unit]")]


def test_units_start_this_node_with_its_options():
    found = units()
    assert len(found) == 2
    for unit in found:
        (command,) = re.findall(r"^ExecStart=(.*)$", unit, re.MULTILINE)
        args = command.split()
        assert args[:2] == [INSTALLED, "run"]
        # the options exist: --help with them parses and exits 0
        command = [sys.executable, "-m", "node", *args[1:], "--help"]
        r = subprocess.run(command, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    executable = Path(sys.executable).parent / "seamless-node"
    assert executable.exists()
    for unit, name in zip(units(), ("seamless-node.service", "seamless-store.service"), strict=True):
        path = tmp_path / name
        path.write_text(unit.replace(INSTALLED, str(executable)))
        r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, timeout=60)
        ours = [line for line in r.stderr.decode().splitlines() if name in line]
        assert r.returncode == 0 and ours == [], r.stderr.decode()
