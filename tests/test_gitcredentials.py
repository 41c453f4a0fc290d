"""The environment GitCredentials gives a `git` process: config entries merged with the caller's, the
CA file, and the private copy of an SSH key file that ssh would refuse (against real servers in
test_git_transports.py)."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

import pytest

from ollama_gitops.reconciler.git.credentials import PRIVATE_KEY_COPY, GitCredentials


def ssh_identity(env: dict[str, str]) -> str:
    ssh = shlex.split(env["GIT_SSH_COMMAND"])
    return ssh[ssh.index("-i") + 1]


def test_config_entries_follow_those_already_in_the_environment() -> None:
    base = {"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "core.abbrev", "GIT_CONFIG_VALUE_0": "9",
            "GIT_CONFIG_KEY_1": "http.lowSpeedTime", "GIT_CONFIG_VALUE_1": "30"}
    env = GitCredentials(token="s3cret").environment(base)
    assert env["GIT_CONFIG_COUNT"] == "3"
    assert env["GIT_CONFIG_KEY_2"] == "http.extraHeader"
    assert "GIT_CONFIG_KEY_0" not in env and "GIT_CONFIG_KEY_1" not in env  # the caller's stay as they are


def test_ca_file_is_given_to_git_and_nothing_turns_verification_off(tmp_path: Path) -> None:
    env = GitCredentials(token="s3cret", ca_file=tmp_path / "ca.pem").environment({})
    assert env["GIT_SSL_CAINFO"] == str(tmp_path / "ca.pem")
    assert "GIT_SSL_NO_VERIFY" not in env and "false" not in [v.lower() for v in env.values()]
    assert "GIT_SSL_CAINFO" not in GitCredentials(token="s3cret").environment({})


def test_ssh_checks_host_keys_strictly_and_never_prompts(tmp_path: Path) -> None:
    ssh = shlex.split(GitCredentials(ssh_key_file=tmp_path / "id").environment({})["GIT_SSH_COMMAND"])
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", "UpdateHostKeys=no", "IdentitiesOnly=yes"} <= set(ssh)


def test_key_readable_by_others_is_copied_privately_and_follows_the_file(tmp_path: Path) -> None:
    key, clone = tmp_path / "secret" / "ssh-privatekey", tmp_path / "clone.git"
    key.parent.mkdir()
    clone.mkdir()
    key.write_bytes(b"first key\n")
    key.chmod(0o644)
    credentials = GitCredentials(ssh_key_file=key, known_hosts_file=tmp_path / "known_hosts")
    copy = clone / PRIVATE_KEY_COPY

    assert ssh_identity(credentials.environment({}, private_dir=clone)) == str(copy)
    assert copy.read_bytes() == b"first key\n" and stat.S_IMODE(copy.stat().st_mode) == 0o600

    key.write_bytes(b"rotated key\n")  # a Secret updated in place
    assert ssh_identity(credentials.environment({}, private_dir=clone)) == str(copy)
    assert copy.read_bytes() == b"rotated key\n"
    assert [p.name for p in clone.iterdir()] == [PRIVATE_KEY_COPY]  # no temporary files left behind

    key.chmod(0o400)  # fixed: ssh takes the file itself, and the copy goes
    assert ssh_identity(credentials.environment({}, private_dir=clone)) == str(key)
    assert not copy.exists()


def test_without_a_private_directory_the_key_is_used_as_it_is(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_bytes(b"key\n")
    key.chmod(0o644)
    assert ssh_identity(GitCredentials(ssh_key_file=key).environment({})) == str(key)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_key_owned_by_another_user_is_used_as_it_is(tmp_path: Path) -> None:
    # ssh checks the mode only of a key its own user owns: a Secret file owned by root and read by
    # a non-root process (through fsGroup) works as mounted.
    key, clone = tmp_path / "id", tmp_path / "clone.git"
    clone.mkdir()
    key.write_bytes(b"key\n")
    key.chmod(0o644)
    os.chown(key, 65534, 65534)
    assert ssh_identity(GitCredentials(ssh_key_file=key).environment({}, private_dir=clone)) == str(key)
    assert not (clone / PRIVATE_KEY_COPY).exists()


def test_missing_key_file_is_left_for_ssh_to_report(tmp_path: Path) -> None:
    clone = tmp_path / "clone.git"
    clone.mkdir()
    env = GitCredentials(ssh_key_file=tmp_path / "absent").environment({}, private_dir=clone)
    assert ssh_identity(env) == str(tmp_path / "absent")


def test_user_info_leaves_the_url_for_the_credentials() -> None:
    url, credentials = GitCredentials().for_remote("https://bot:p%40ss%3Aword@git.example.com:8443/acme/models.git")
    assert url == "https://git.example.com:8443/acme/models.git"
    assert (credentials.username, credentials.token) == ("bot", "p@ss:word")
    url, credentials = GitCredentials(token="t0k").for_remote("https://bot@[::1]:8443/models.git")
    assert (url, credentials.username, credentials.token) == ("https://[::1]:8443/models.git", "bot", "t0k")
    assert GitCredentials(token="t0k").for_remote("https://bot:t0k@h/m.git")[1].token == "t0k"  # the same one
    for untouched in ("ssh://git@github.com/acme/models.git", "git@github.com:acme/models.git", "/srv/models.git",
                      "https://github.com/acme/models.git", "http://localhost/models.git"):
        assert GitCredentials().for_remote(untouched) == (untouched, GitCredentials())
    with pytest.raises(ValueError, match="two HTTPS tokens"):
        GitCredentials(token="one").for_remote("https://bot:two@h/m.git")
    with pytest.raises(ValueError, match="in clear to the http:// repository http://h/m.git") as refused:
        GitCredentials().for_remote("http://bot:s3cret@h/m.git")
    assert "s3cret" not in str(refused.value)
