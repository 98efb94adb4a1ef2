"""The `meranet-fast` dispatcher: every subcommand is reachable and documents its options."""
import subprocess
import sys

import pytest

from meranet_fast.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"meranet-fast {command}" in out
    assert "--" in out  # at least one documented option


def test_unknown_command_fails_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "meranet_fast.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "flops" in done.stdout
