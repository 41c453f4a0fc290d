"""`--help` and README's option tables say the same (issue 15): both come from each option's one
definition (`settings.add_option`: its environment variables and its documented default), and this
holds README to it. Every option of `reconcile`, `serve`, `api`, `status` and `validate` has a README
row naming that command, with the same environment variables and default; every README row is a real
option of each command it names; every help line names its default and its variables."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ollama_gitops.api.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ("reconcile", "serve", "api", "status", "validate", "plan")
HEADER = "| option | commands | environment | default |"


def options_of(command: str) -> dict[str, argparse.Action]:
    _, commands = build_parser()
    parser = commands.choices[command]
    return {next(s for s in a.option_strings if s.startswith("--")): a
            for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)}


def cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def readme_rows() -> list[tuple[list[str], set[str], set[str], str]]:
    """(options, commands, environment variables, default) of every row of README's option tables."""
    rows, in_table = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.strip() == HEADER:
            in_table = True
            continue
        if not in_table or not line.startswith("|"):
            in_table = False
            continue
        option, commands, environment, default = cells(line)
        if set(option) <= {"-", " "}:
            continue  # the |---| line
        rows.append((re.findall(r"--[a-z][a-z-]*", option), set(re.findall(r"[a-z]+", commands)) & set(COMMANDS),
                     set(re.findall(r"OLLAMA_GITOPS_[A-Z_]+", environment)), default.replace("`", "")))
    return rows


def says_default(cell: str, text: str) -> bool:
    """README may explain after the default, not instead of it."""
    return cell == text or any(cell.startswith(text + sep) for sep in (":", " ", ",", ";"))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_a_readme_row_with_its_environment_and_default(command: str) -> None:
    rows = readme_rows()
    for flag, action in options_of(command).items():
        matching = [row for row in rows if flag in row[0] and command in row[1]]
        assert len(matching) == 1, f"`{command} {flag}`: {len(matching)} README rows, want 1"
        (_, _, environment, default), = matching
        assert environment == set(action.env), f"`{command} {flag}`: README says {environment}, it reads {action.env}"
        assert says_default(default, action.default_text), \
            f"`{command} {flag}`: README's default {default!r} is not {action.default_text!r}"


def test_every_readme_row_is_a_real_option_of_the_commands_it_names() -> None:
    rows = readme_rows()
    assert len(rows) > 30  # the tables were found
    for flags, commands, _, _ in rows:
        assert flags and commands, (flags, commands)
        for command in commands:
            for flag in flags:
                assert flag in options_of(command), f"README lists {flag} for `{command}`, which has no such option"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_line_names_its_default_and_environment(command: str) -> None:
    for flag, action in options_of(command).items():
        if isinstance(action, argparse._VersionAction):
            continue
        assert hasattr(action, "default_text"), f"`{command} {flag}` was not made with settings.add_option"
        assert f"(default: {action.default_text})" in action.help
        assert all(name in action.help for name in action.env)


def test_api_takes_only_the_options_it_uses() -> None:
    """`api` neither pulls nor leads: no option about Ollama, pulls, prune or the Lease."""
    assert {"--ollama-url", "--concurrency", "--resync-interval", "--allow-empty", "--lease-duration"} \
        .isdisjoint(options_of("api"))
    assert {"--interval", "--state-dir", "--repo", "--branch", "--kubernetes", "--leader-election-namespace",
            "--threads"} <= set(options_of("api"))
