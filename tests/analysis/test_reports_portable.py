"""Committed reports carry no machine's paths: tracking URIs and files are relative to the repository."""
import re

import pytest

from pipeline.config import portable_uri
from tests.conftest import REPO

TEXT_SUFFIXES = {".json", ".csv", ".md", ".txt", ".yaml"}
# an absolute POSIX path standing alone (after a quote, space, '=', '(' or a line start), or after sqlite:/// or file://
ABSOLUTE = re.compile(r"""(?:^|[\s"'=(,\[])(/(?:[\w.-]+/)+[\w.-]*)|(?:sqlite:///|file://)(/[\w.-]+/)""")


def test_no_committed_report_holds_an_absolute_path():
    found = []
    for path in sorted((REPO / "reports").rglob("*")):
        if path.suffix in TEXT_SUFFIXES and path.is_file():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                for match in ABSOLUTE.finditer(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {match.group(0).strip()[:80]}")
    assert not found, "\n".join(found[:20])


@pytest.mark.parametrize("uri, expected", [
    ("sqlite:////repo/mlflow.db", "sqlite:///mlflow.db"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("sqlite:////elsewhere/mlflow.db", "sqlite:"),
    ("file:///repo/mlruns", "mlruns"),
    ("file:///elsewhere/mlruns", "file:"),
    ("/repo/reports/x.json", "reports/x.json"),
    ("/elsewhere/x", "<local path>"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
])
def test_portable_uri_keeps_servers_and_hides_machine_paths(uri, expected, tmp_path):
    from pathlib import Path

    assert portable_uri(uri, root=Path("/repo")) == expected
