"""Webhook deliveries as the Git hosts send them: headers and body, signed with a secret, for tests.

The payloads keep the fields ollama-gitops reads (and some it does not), in each host's own shape:
GitHub's push and ping, GitLab's Push Hook, Gitea's and Forgejo's push (which also carry GitHub's
and Gogs's headers), and the generic form.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlencode

SECRET = "whs-8f1c2e0b9a7d4c3e"


@dataclass
class Sent:
    """One delivery: what an HTTP client posts to /api/v1/webhook."""

    headers: dict[str, str]
    body: bytes
    delivery_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_repository(url: str) -> dict:
    """GitHub's `repository` object; for a repository on github.com, every URL field it carries."""
    if url.startswith("https://github.com/"):
        path = url.removeprefix("https://github.com/").removesuffix(".git")
        return {"id": 1296269, "name": path.split("/")[-1], "full_name": path, "private": True,
                "html_url": f"https://github.com/{path}", "url": f"https://github.com/{path}",
                "git_url": f"git://github.com/{path}.git", "ssh_url": f"git@github.com:{path}.git",
                "clone_url": f"https://github.com/{path}.git", "svn_url": f"https://github.com/{path}",
                "default_branch": "main"}
    return {"id": 1, "name": "models", "full_name": "acme/models", "clone_url": url, "default_branch": "main"}


def github(url: str, *, secret: str = SECRET, event: str = "push", ref: str = "refs/heads/main",
           form: bool = False) -> Sent:
    if event == "ping":
        document: dict = {"zen": "Design for failure.", "hook_id": 42, "hook": {"type": "Repository", "active": True,
                                                                              "events": ["push"]},
                          "repository": github_repository(url)}
    else:
        document = {"ref": ref, "before": "0" * 40, "after": "1" * 40, "created": False, "deleted": False,
                    "forced": False, "repository": github_repository(url),
                    "pusher": {"name": "octocat", "email": "octocat@example.com"},
                    "commits": [{"id": "1" * 40, "message": "Add phi3", "added": ["models/default/phi3-mini.yaml"]}]}
    text = json.dumps(document)
    body = urlencode({"payload": text}).encode() if form else text.encode()
    sent = Sent({}, body)
    sent.headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": sent.delivery_id,
                    "X-GitHub-Hook-ID": "42", "User-Agent": "GitHub-Hookshot/044aadd",
                    "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
                    "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(),
                    "X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body)}
    return sent


def gitlab(url: str, *, token: str = SECRET, event: str = "Push Hook", ref: str = "refs/heads/main") -> Sent:
    """GitLab sends the project's URLs under `project` and again under `repository`."""
    web = url.removesuffix(".git")
    ssh = url if url.startswith("git@") else f"git@gitlab.example.com:{web.rsplit('/', 2)[-2]}/{web.rsplit('/', 1)[-1]}.git"
    document = {"object_kind": "push", "event_name": "push", "before": "0" * 40, "after": "1" * 40, "ref": ref,
                "user_username": "jsmith", "project_id": 15,
                "project": {"id": 15, "name": "models", "web_url": web, "git_ssh_url": ssh, "git_http_url": url,
                            "namespace": "acme", "path_with_namespace": "acme/models", "default_branch": "main",
                            "homepage": web, "url": ssh, "ssh_url": ssh, "http_url": url},
                "repository": {"name": "models", "url": ssh, "homepage": web, "git_http_url": url, "git_ssh_url": ssh},
                "commits": [], "total_commits_count": 0}
    body = json.dumps(document).encode()
    sent = Sent({}, body)
    sent.headers = {"X-Gitlab-Event": event, "X-Gitlab-Token": token, "X-Gitlab-Event-UUID": sent.delivery_id,
                    "X-Gitlab-Instance": "https://gitlab.example.com", "Content-Type": "application/json",
                    "User-Agent": "GitLab/17.5.0"}
    return sent


def gitea(url: str, *, secret: str = SECRET, forgejo: bool = False, ref: str = "refs/heads/main",
          event: str = "push") -> Sent:
    """Gitea (and Forgejo, its fork) sign with a bare hex HMAC, and send GitHub's and Gogs's headers too."""
    document = {"ref": ref, "before": "0" * 40, "after": "1" * 40, "compare_url": "",
                "repository": {"id": 3, "name": "models", "full_name": "acme/models", "html_url": url.removesuffix(".git"),
                               "ssh_url": "git@gitea.example.com:acme/models.git", "clone_url": url},
                "pusher": {"login": "jsmith"}, "commits": []}
    body = json.dumps(document).encode()
    signature = hex_hmac(secret, body)
    sent = Sent({}, body)
    sent.headers = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": sent.delivery_id,
                    "X-Gogs-Event": event, "X-Gogs-Delivery": sent.delivery_id, "X-Gogs-Signature": signature,
                    "X-Gitea-Event": event, "X-Gitea-Delivery": sent.delivery_id, "X-Gitea-Signature": signature,
                    "X-Hub-Signature-256": "sha256=" + signature}
    if forgejo:
        sent.headers.update({"X-Forgejo-Event": event, "X-Forgejo-Delivery": sent.delivery_id,
                             "X-Forgejo-Signature": signature})
    return sent


def generic(url: str, *, secret: str = SECRET, ref: str = "refs/heads/main") -> Sent:
    body = json.dumps({"repository": url, "ref": ref}).encode()
    return Sent({"Content-Type": "application/json", "X-Ollama-Gitops-Signature": "sha256=" + hex_hmac(secret, body)},
                body)
