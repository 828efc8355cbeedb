"""Issue 19: the coverage-guided fuzz targets (fuzz/parsers.py, atheris) run briefly on every test run.

Each target runs in its own process for a few seconds from seeds it makes itself; a finding (an exception that is
not one of our refusals, a crash, an input slower than 10 s, more than 2 GiB) makes libFuzzer exit non-zero and
leaves the input in the test's folder, whose path the failure shows. Long runs on demand: see fuzz/parsers.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz" / "parsers.py"
TARGETS = ["mime", "envelope", "signed", "signed-entity", "fields"]
SECONDS = int(os.environ.get("FUZZ_SECONDS", "4"))


def fuzz(target: str, folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FUZZ), target, str(folder / "corpus"), f"-max_total_time={SECONDS}",
                           "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={folder}/", *options],
                          cwd=folder, capture_output=True, text=True, timeout=SECONDS + 120)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    run = fuzz(target, tmp_path)
    assert run.returncode == 0, f"{target}: finding in {tmp_path}\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    done = re.search(r"Done (\d+) runs", run.stderr)
    assert done and int(done.group(1)) > 100, run.stderr[-2000:]  # it ran, from seeds that parse
    assert len(list((tmp_path / "corpus").iterdir())) > 1


def test_a_parser_that_raises_anything_else_is_a_finding(tmp_path: Path) -> None:
    """The harness itself: an exception that is not a refusal is reported, with the input saved."""
    script = tmp_path / "broken.py"
    script.write_text(FUZZ.read_text().replace("    fields.content_type(text)\n",
                                               "    fields.content_type(text)\n    if ';;' in text:\n"
                                               "        raise IndexError('planted')\n"))
    run = subprocess.run([sys.executable, str(script), "fields", str(tmp_path / "corpus"), "-max_total_time=60",
                          f"-artifact_prefix={tmp_path}/"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "PYTHONPATH": str(FUZZ.parent.parent)})
    output = run.stdout + run.stderr  # atheris prints the Python traceback on stdout, libFuzzer on stderr
    assert run.returncode != 0 and "IndexError: planted" in output, output[-2000:]
    assert list(tmp_path.glob("crash-*"))
