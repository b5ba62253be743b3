from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from esrec.cli import main


@pytest.mark.parametrize("command", [[], ["stack"], ["stack", "up"], ["stack", "down"],
                                     ["stack", "status"], ["doctor"], ["config", "show"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_config_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESREC_ES__API_KEY", "top-secret")
    result = CliRunner().invoke(main, ["config", "show"])
    assert result.exit_code == 0
    shown = json.loads(result.output)
    assert shown["es"]["api_key"] == "**********"
    assert "top-secret" not in result.output
