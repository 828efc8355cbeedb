"""The README's main job must keep working: the two-HISP demo through real Postfix instances."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.conformance("AS-0-1")
def test_demo_runs_and_the_message_crosses_encrypted() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "demo: OK" in result.stdout
    wire = result.stdout.split("==== what HISP A sent over the wire")[1].split("==== what HISP B delivered")[0]
    assert "application/pkcs7-mime" in wire and "Referral for patient" not in wire
