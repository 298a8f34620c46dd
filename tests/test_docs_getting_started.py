"""
The getting-started page's curl examples, run as written against a real
twistd server (its ports substituted), with their answers checked against
the shapes the page shows.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "README.md"


def curl_examples() -> list[tuple[str, str]]:
    """
    Each C{curl} line of the guide with the C{# ...} answer shown under it.
    """
    lines = GUIDE.read_text().splitlines()
    examples = []
    for index, line in enumerate(lines):
        if line.startswith("curl "):
            answer = lines[index + 1]
            assert answer.startswith("# "), f"no answer shown under {line!r}"
            examples.append((line, answer[2:]))
    return examples


def shape(text: str) -> str:
    """
    The answer with its variable parts (times, numbers) blanked out.
    """
    text = re.sub(r'"time":"[^"]*"', '"time":T', text)
    return re.sub(r"\d+", "N", text)


def test_the_guide_shows_curl_examples():
    assert len(curl_examples()) >= 4


@pytest.mark.parametrize("command, answer", curl_examples())
def test_each_getting_started_example_answers_as_shown(server_process, command, answer):
    server = server_process()
    command = command.replace("127.0.0.1:9001", f"127.0.0.1:{server.ports['ajax']}")
    result = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert shape(result.stdout.strip()) == shape(answer)
