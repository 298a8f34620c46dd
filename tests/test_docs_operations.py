"""
The configuration file shown in docs/operations.md is a valid configuration
(the application it names aside, which is the reader's own).
"""

from __future__ import annotations

import re
from pathlib import Path

from appserver._server.config import resolve_configuration

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def test_the_documented_configuration_file_is_accepted(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", OPERATIONS.read_text(), re.S)
    assert blocks, "docs/operations.md shows no TOML configuration"
    path = tmp_path / "appserver.toml"
    path.write_text(blocks[0])
    resolved = resolve_configuration({}, {}, str(path))
    settings = resolved.settings
    assert settings.max_message_size == 64 * 1024
    assert settings.allowed_origin == ("https://chat.example.com", "https://*.example.com")
    assert settings.queue_policy == "drop-oldest" and settings.log_format == "json"
