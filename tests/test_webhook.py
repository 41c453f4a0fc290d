"""`api.webhook`, the pure part of webhooks: telling providers apart, checking signatures and tokens,
reading pushes, and matching repository URLs however they are spelt."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_gitops.api.webhook import (SIGNATURE_MISMATCH, Delivery, Envelope, RepositoryId, Verdict,
                                       WebhookConfig, WebhookRejected, envelope_of, judge, read_delivery,
                                       receive, repository_id, sign)
from webhooks import SECRET, generic, gitea, github, gitlab, hex_hmac

GITHUB_URL = "https://github.com/acme/models"
CONFIG = WebhookConfig(SECRET, "git@github.com:acme/models.git", "main")


def rejected(headers: dict, body: bytes, secret: str = SECRET) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        read_delivery(headers, body, secret)
    return caught.value


# -- signatures -------------------------------------------------------------------------------------


def test_sign_matches_githubs_published_example() -> None:
    # The test vector in GitHub's "Validating webhook deliveries".
    assert sign("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")


def test_a_github_push_is_read_after_its_signature_is_checked() -> None:
    sent = github(GITHUB_URL)
    delivery = read_delivery(sent.headers, sent.body, SECRET)
    assert delivery == Delivery(Envelope("github", "push", sent.delivery_id), "push", "refs/heads/main", (
        "https://github.com/acme/models.git", "git@github.com:acme/models.git", "https://github.com/acme/models",
        "git://github.com/acme/models.git"))


@pytest.mark.parametrize("signature", [
    None, "", "sha256=", "sha256=" + "0" * 64, "sha1=" + "0" * 40, "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
])
def test_a_missing_or_wrong_github_signature_is_401_saying_only_that(signature: str | None) -> None:
    sent = github(GITHUB_URL)
    if signature is None:
        del sent.headers["X-Hub-Signature-256"]
    else:
        sent.headers["X-Hub-Signature-256"] = signature
    error = rejected(sent.headers, sent.body)
    assert (error.status, error.message) == (401, SIGNATURE_MISMATCH)
    assert error.envelope == Envelope("github", "push", sent.delivery_id)  # for the log line


def test_another_secret_is_401() -> None:
    sent = github(GITHUB_URL, secret="not-the-secret")
    assert rejected(sent.headers, sent.body).status == 401


def test_a_replayed_signature_over_a_changed_payload_is_401() -> None:
    sent = github(GITHUB_URL, ref="refs/heads/feature")
    tampered = sent.body.replace(b"refs/heads/feature", b"refs/heads/main")
    assert tampered != sent.body
    assert rejected(sent.headers, tampered).status == 401
    assert read_delivery(sent.headers, sent.body, SECRET).ref == "refs/heads/feature"  # the original still passes


def test_hex_case_and_header_name_case_do_not_matter() -> None:
    sent = github(GITHUB_URL)
    headers = {name.lower(): value for name, value in sent.headers.items()}
    headers["x-hub-signature-256"] = "sha256=" + headers["x-hub-signature-256"].removeprefix("sha256=").upper()
    assert read_delivery(headers, sent.body, SECRET).kind == "push"


@given(secret=st.text(min_size=1, max_size=40), body=st.binary(max_size=300), data=st.data())
@settings(max_examples=150, deadline=None)
def test_any_changed_byte_breaks_the_signature(secret: str, body: bytes, data: st.DataObject) -> None:
    headers = {"X-GitHub-Event": "zen", "X-Hub-Signature-256": sign(secret, body)}
    assert read_delivery(headers, body, secret).kind == "other"
    if body:
        index = data.draw(st.integers(0, len(body) - 1))
        flip = data.draw(st.integers(1, 255))
        changed = body[:index] + bytes([body[index] ^ flip]) + body[index + 1:]
        assert rejected(headers, changed, secret).status == 401
    assert rejected(headers, body + b" ", secret).status == 401


def test_nothing_to_check_is_401_not_400() -> None:
    for headers in ({}, {"Content-Type": "application/json"}, {"X-Some-Event": "push"}):
        error = rejected(headers, b"{not json")
        assert (error.status, error.message, error.envelope.provider) == (401, SIGNATURE_MISMATCH, "unknown")


def test_an_unsigned_body_is_never_parsed() -> None:
    sent = github(GITHUB_URL)
    sent.headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    assert rejected(sent.headers, b"\xff{not json").status == 401  # not 400: it was not read


# -- GitLab -----------------------------------------------------------------------------------------


def test_gitlab_token_right_and_wrong() -> None:
    url = "https://gitlab.example.com/acme/models.git"
    sent = gitlab(url)
    delivery = read_delivery(sent.headers, sent.body, SECRET)
    assert delivery.envelope == Envelope("gitlab", "Push Hook", sent.delivery_id)
    assert delivery.ref == "refs/heads/main"
    assert set(delivery.repositories) == {url, "https://gitlab.example.com/acme/models",
                                          "git@gitlab.example.com:acme/models.git"}
    for token in ("wrong", SECRET + "x", SECRET[:-1], SECRET.upper(), ""):
        assert rejected(gitlab(url, token=token).headers, sent.body).status == 401
    headers = dict(sent.headers)
    del headers["X-Gitlab-Token"]
    assert rejected(headers, sent.body).message == SIGNATURE_MISMATCH


def test_gitlab_tag_pushes_and_other_events_are_not_pushes() -> None:
    for event in ("Tag Push Hook", "Merge Request Hook"):
        sent = gitlab("https://gitlab.example.com/acme/models.git", event=event)
        assert read_delivery(sent.headers, sent.body, SECRET).kind == "other"


# -- Gitea, Forgejo, generic ------------------------------------------------------------------------


def test_gitea_is_told_apart_from_the_github_headers_it_also_sends() -> None:
    sent = gitea("https://gitea.example.com/acme/models.git")
    delivery = read_delivery(sent.headers, sent.body, SECRET)
    assert delivery.envelope.provider == "gitea" and delivery.kind == "push"
    assert delivery.repositories == ("https://gitea.example.com/acme/models.git",
                                     "git@gitea.example.com:acme/models.git", "https://gitea.example.com/acme/models")
    # Its own signature is the one checked: a right GitHub-style one does not stand in for it.
    sent.headers["X-Gitea-Signature"] = "0" * 64
    assert rejected(sent.headers, sent.body).status == 401


def test_forgejo_signs_with_its_own_header_or_giteas() -> None:
    sent = gitea("https://code.example.org/acme/models.git", forgejo=True)
    assert read_delivery(sent.headers, sent.body, SECRET).envelope.provider == "forgejo"
    del sent.headers["X-Forgejo-Signature"]
    assert read_delivery(sent.headers, sent.body, SECRET).kind == "push"
    sent.headers["X-Gitea-Signature"] = hex_hmac("other", sent.body)
    assert rejected(sent.headers, sent.body).status == 401


def test_the_generic_form() -> None:
    sent = generic("/srv/models.git")
    delivery = read_delivery(sent.headers, sent.body, SECRET)
    assert delivery == Delivery(Envelope("generic", "push"), "push", "refs/heads/main", ("/srv/models.git",))
    assert rejected(generic("/srv/models.git", secret="wrong").headers, sent.body).status == 401


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{not json", "not a JSON document"),
    (b"\xff\xfe", "not a JSON document"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"repository": "/srv/models.git"}', "must name its 'ref'"),
    (b'{"repository": "/srv/models.git", "ref": 7}', "must name its 'ref'"),
    (b'{"ref": "refs/heads/main"}', "must name its repository's URL"),
    (b'{"ref": "refs/heads/main", "repository": {"url": "/srv"}}', "must name its repository's URL"),
])
def test_a_malformed_signed_push_is_400(body: bytes, fragment: str) -> None:
    headers = {"X-Ollama-Gitops-Signature": sign(SECRET, body)}
    error = rejected(headers, body)
    assert error.status == 400 and fragment in error.message


def test_githubs_form_encoded_payload_is_read_too() -> None:
    sent = github(GITHUB_URL, form=True)
    assert sent.body.startswith(b"payload=")
    assert read_delivery(sent.headers, sent.body, SECRET).ref == "refs/heads/main"


# -- what to do with a delivery ---------------------------------------------------------------------


def test_a_push_to_the_tracked_repository_and_branch_is_accepted() -> None:
    sent = github(GITHUB_URL)
    assert receive(CONFIG, sent.headers, sent.body)[1] == Verdict("accepted")


def test_another_branch_a_tag_or_another_repository_is_ignored_with_a_reason() -> None:
    for ref in ("refs/heads/feature", "refs/tags/v1", "main"):
        sent = github(GITHUB_URL, ref=ref)
        verdict = receive(CONFIG, sent.headers, sent.body)[1]
        assert verdict == Verdict("ignored", f"push to {ref}, not to refs/heads/main")
    sent = github("https://github.com/acme/other")
    assert receive(CONFIG, sent.headers, sent.body)[1] == Verdict(
        "ignored", "push to another repository (https://github.com/acme/other.git)")


def test_ping_is_acknowledged_and_says_when_the_repository_is_not_the_tracked_one() -> None:
    sent = github(GITHUB_URL, event="ping")
    assert receive(CONFIG, sent.headers, sent.body)[1] == Verdict("pong", "webhook configured")
    sent = github("https://github.com/acme/other", event="ping")
    verdict = receive(CONFIG, sent.headers, sent.body)[1]
    assert verdict.status == "pong" and "not the tracked repository" in verdict.reason


def test_other_events_are_ignored_without_reading_the_body() -> None:
    body = b"not json at all"
    headers = {"X-GitHub-Event": "issues", "X-Hub-Signature-256": sign(SECRET, body)}
    delivery, verdict = receive(CONFIG, headers, body)
    assert delivery.kind == "other"
    assert verdict == Verdict("ignored", "'issues' events are ignored: only pushes start a cycle")


def test_gitlab_and_gitea_pushes_match_by_any_of_their_urls() -> None:
    config = WebhookConfig(SECRET, "ssh://git@gitlab.example.com:2222/acme/models.git", "main")
    sent = gitlab("https://gitlab.example.com/acme/models.git")
    assert receive(config, sent.headers, sent.body)[1].accepted
    config = WebhookConfig(SECRET, "git@gitea.example.com:acme/models.git", "main")
    sent = gitea("https://gitea.example.com/acme/models.git")
    assert receive(config, sent.headers, sent.body)[1].accepted


def test_delivery_ids_are_made_safe_for_a_log_line() -> None:
    envelope = envelope_of({"X-GitHub-Event": "push", "X-GitHub-Delivery": "abc-1\nFAKE action=delete" + "x" * 100})
    assert envelope.delivery_id == "abc-1FAKEactiondelete" + "x" * 43  # no newline, no '=', 64 characters
    assert envelope_of({}) == Envelope("unknown", "")


# -- repository URLs --------------------------------------------------------------------------------

SAME = [
    "https://github.com/Org/Repo", "https://GitHub.com/Org/Repo.git/", "git@github.com:Org/Repo",
    "git@github.com:Org/Repo.git", "ssh://git@github.com/Org/Repo.git", "ssh://git@github.com:22/Org/Repo",
    "http://user:pw@github.com/Org/Repo", "git://github.com/Org/Repo.git", "https://github.com//Org/Repo//",
    "github.com:Org/Repo", "  https://github.com/Org/Repo  ", "git+ssh://git@GITHUB.COM/Org/Repo.git",
]


@pytest.mark.parametrize("url", SAME)
def test_one_repository_however_its_url_is_written(url: str) -> None:
    assert repository_id(url) == RepositoryId("github.com", "Org/Repo")


@pytest.mark.parametrize(("a", "b"), [
    ("https://github.com/Org/Repo", "https://github.com/org/repo"),  # the path keeps its case
    ("https://github.com/Org/Repo", "https://gitlab.com/Org/Repo"),
    ("https://github.com/Org/Repo", "https://github.com/Org/Repo2"),
    ("https://github.com/Org/Repo", "https://github.com/Org"),
    ("https://github.com/Org/Repo", "/github.com/Org/Repo"),  # a local path is no host
    ("/srv/models", "/srv/other"),
    ("/srv/models", "srv/models"),
])
def test_different_repositories_stay_apart(a: str, b: str) -> None:
    assert repository_id(a) != repository_id(b)


@pytest.mark.parametrize("url", ["/srv/git/models", "/srv/git/models/", "/srv/git/models.git", "/srv/git/models/.git",
                                 "file:///srv/git/models.git", "file://localhost/srv/git/models", "/srv/git/./models",
                                 "/srv/git//models"])
def test_a_local_repository_by_its_path_or_file_url(url: str) -> None:
    assert repository_id(url) == RepositoryId("", "/srv/git/models")


@pytest.mark.parametrize("url", ["", "   ", "https://", "https:///Org/Repo", "http://[::1/x", "git@github.com:",
                                 "https://github.com/", "https://github.com/Org\n/Repo"])
def test_what_names_no_repository(url: str) -> None:
    assert repository_id(url) is None


_HOSTS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){1,2}", fullmatch=True)
_SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)


@given(host=_HOSTS, segments=st.lists(_SEGMENT, min_size=1, max_size=3), user=st.sampled_from(["", "git@", "u:p@"]),
       port=st.sampled_from(["", ":22", ":8443"]), suffix=st.sampled_from(["", ".git", "/", ".git/"]),
       scheme=st.sampled_from(["https", "http", "ssh", "git"]), upper=st.booleans())
def test_every_spelling_of_a_remote_url_is_one_repository(host: str, segments: list[str], user: str, port: str,
                                                          suffix: str, scheme: str, upper: bool) -> None:
    path = "/".join(segments)
    shown_host = host.upper() if upper else host
    expected = RepositoryId(host, path)
    assert repository_id(f"{scheme}://{user}{shown_host}{port}/{path}{suffix}") == expected
    assert repository_id(f"git@{shown_host}:{path}{suffix}") == expected
    assert repository_id(f"https://{host}/{path}") == expected


@given(host=_HOSTS, segment=_SEGMENT.filter(lambda s: s.swapcase() != s))
def test_a_path_differing_in_case_is_another_repository(host: str, segment: str) -> None:
    assert repository_id(f"https://{host}/acme/{segment}") != repository_id(f"https://{host}/acme/{segment.swapcase()}")


@given(segments=st.lists(_SEGMENT, min_size=1, max_size=4))
def test_a_path_and_its_file_url_are_one_repository(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    assert repository_id(path) == repository_id(f"file://{path}") == repository_id(path + "/") is not None


@given(st.text(max_size=80))
def test_any_text_gives_an_answer_never_an_exception(text: str) -> None:
    result = repository_id(text)
    assert result is None or isinstance(result, RepositoryId)


@given(body=st.binary(max_size=200), headers=st.dictionaries(
    st.sampled_from(["X-GitHub-Event", "X-Gitlab-Event", "X-Gitea-Event", "X-Forgejo-Event", "X-Gitlab-Token",
                     "X-Hub-Signature-256", "X-Ollama-Gitops-Signature", "X-Gitea-Signature", "Content-Type"]),
    st.text(max_size=30)))
def test_any_delivery_is_answered_or_rejected_never_crashes(body: bytes, headers: dict[str, str]) -> None:
    try:
        delivery = read_delivery(headers, body, SECRET)
    except WebhookRejected as error:
        assert error.status in (400, 401)
    else:
        assert judge(delivery, repository_id(CONFIG.repository), "main").status in ("accepted", "ignored", "pong")


def test_config_never_shows_the_secret() -> None:
    assert SECRET not in repr(CONFIG) and json.dumps(SECRET) not in repr(CONFIG)
