"""`meshctl --help` leads a newcomer to the demo and to pointing meshctl at a lab."""

from __future__ import annotations

from click.testing import CliRunner

from control.meshctl.cli import cli


def help_of(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def test_meshctl_help_names_the_demo_and_lab_env_as_the_way_in() -> None:
    text = help_of()
    assert "meshctl demo" in text and "meshctl lab up" in text and "eval $(meshctl lab env)" in text


def test_meshctl_help_lists_demo_with_what_it_shows() -> None:
    line = next(line for line in help_of().splitlines() if line.strip().startswith("demo "))
    assert "Build a lab, deploy a meshed shop, show routing, mTLS, policy, ejection." in " ".join(line.split())


def test_meshctl_lab_help_lists_env_with_what_it_prints() -> None:
    line = next(line for line in help_of("lab").splitlines() if line.strip().startswith("env "))
    assert "Print the exports that point meshctl at the lab's control plane." in line
