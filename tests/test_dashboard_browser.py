"""The dashboard in a real browser: Debian's headless Chromium against a real `serve` (in-process:
waitress, a bare remote, the stand-in Ollama). One browser for the module; screenshots of each main
view are kept (tests/browser.py says where)."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from apirig import API_KEY, ApiRig
from browser import artifacts, chromium, console_errors, quit_chromium
from waiting import eventually

ROWS = """return [...document.querySelectorAll('#models-body tr[data-key]')].map(r => [r.dataset.key, r.dataset.state]);"""


@pytest.fixture(scope="module")
def driver():
    browser = chromium()
    yield browser
    quit_chromium(browser)


@pytest.fixture
def serve(tmp_path: Path, ollama, driver):
    rig = ApiRig(tmp_path, ollama, api_key=None)  # loopback without a key, as on a workstation
    rig.seed(("llama3.2", "1b"), ("gemma3", "1b"))
    console_errors(driver)  # what earlier tests' pages logged is theirs
    yield rig
    driver.get("about:blank")  # the page's stream ends before the server stops
    rig.stop()


def rows(driver) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return dict(driver.execute_script(ROWS))


def open_page(driver, rig: ApiRig) -> None:  # type: ignore[no-untyped-def]
    driver.get(f"{rig.url}/")
    eventually(lambda: driver.execute_script("return document.body.dataset.connection") == "live", timeout=30)


def ready_page(rig: ApiRig, driver) -> None:  # type: ignore[no-untyped-def]
    """`serve` started with its two models Ready, and the page open on them."""
    rig.start()
    rig.settle()
    open_page(driver, rig)
    eventually(lambda: len(rows(driver)) == 2, timeout=30)


def text(driver, element_id: str) -> str:  # type: ignore[no-untyped-def]
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def click(driver, selector: str) -> None:  # type: ignore[no-untyped-def]
    """A real click on the element; the table re-renders its rows as events come, so a row found a
    moment ago may have been replaced: find it again then."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt() -> bool:
        try:
            driver.find_element("css selector", selector).click()
        except StaleElementReferenceException:
            return False
        return True

    eventually(attempt, timeout=10)


def alert(driver):  # type: ignore[no-untyped-def]
    from selenium.common.exceptions import NoAlertPresentException

    def present():  # type: ignore[no-untyped-def]
        try:
            return driver.switch_to.alert
        except NoAlertPresentException:
            return None

    return eventually(present, timeout=10)


def shoot(driver, name: str) -> None:  # type: ignore[no-untyped-def]
    driver.save_screenshot(str(artifacts() / f"dashboard-{name}.png"))


def remote_head(rig: ApiRig) -> str:
    return subprocess.run(["git", "-C", str(rig.remote), "rev-parse", "main"], capture_output=True, text=True,
                          check=True).stdout.strip()


def remote_files(rig: ApiRig) -> set[str]:
    listing = subprocess.run(["git", "-C", str(rig.remote), "ls-tree", "-r", "--name-only", "main"],
                             capture_output=True, text=True, check=True).stdout
    return set(listing.split())


def test_the_page_lists_the_models_with_their_states_and_filters_them(serve: ApiRig, driver) -> None:
    serve.work.model("team-a", "phi3", "mini")
    serve.work.commit("team-a")
    serve.work.push()
    serve.start()
    serve.settle()
    open_page(driver, serve)
    eventually(lambda: rows(driver) == {"default/gemma3-1b": "Ready", "default/llama3.2-1b": "Ready",
                                        "team-a/phi3-mini": "Ready"}, timeout=30)
    assert "Succeeded" in text(driver, "sync-outcome")
    eventually(lambda: "default/llama3.2-1b" in text(driver, "history"), timeout=30)
    # Every control has a label; search and filters narrow the table.
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, select')].filter(e => !e.labels.length).map(e => e.id)")
    assert unlabelled == []
    driver.find_element("id", "search").send_keys("gemma")
    eventually(lambda: list(rows(driver)) == ["default/gemma3-1b"], timeout=10)
    driver.find_element("id", "search").clear()
    driver.execute_script("const s = document.getElementById('filter-namespace'); s.value = 'team-a';"
                          "s.dispatchEvent(new Event('input'))")
    eventually(lambda: list(rows(driver)) == ["team-a/phi3-mini"], timeout=10)
    driver.execute_script("const s = document.getElementById('filter-namespace'); s.value = '';"
                          "s.dispatchEvent(new Event('input'))")
    eventually(lambda: len(rows(driver)) == 3, timeout=10)
    shoot(driver, "models")
    # A repository with a web address: its commits are links (https and scp-like SSH; credentials dropped).
    status = serve.client.get("/api/v1/status").json()
    for repository, web in (("git@github.com:acme/models.git", "https://github.com/acme/models"),
                            ("https://***@gitlab.example.com/team/models.git", "https://gitlab.example.com/team/models")):
        # Applied and read in one script, once no read is in flight: between two scripts the page's own
        # events may bring the real status (its repository a local path, without a web address) and
        # redraw the summary, and during a read the page holds events back until the read is done.
        script = ("if (window.ollamaGitops.state.loading) return null;"
                  "window.ollamaGitops.apply({type: 'status', data: JSON.stringify(arguments[0])});"
                  "const a = document.querySelector('#sync-applied a'); return a && a.href")
        expected = f"{web}/commit/{status['lastAppliedCommit']}"
        eventually(lambda: driver.execute_script(script, {**status, "repository": repository}) == expected, timeout=30)
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    shoot(driver, "models-dark")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert console_errors(driver) == []


def test_a_fleet_shows_its_servers_and_a_column_per_server(tmp_path: Path, ollama, driver) -> None:
    """`serve` keeping a fleet (the rig's stand-in Ollama and two more of a servers file, labelled):
    the servers table from GET /api/v1/servers, one column per server from the models' `servers`
    lists, the server filter, and a server going down shown without a reload."""
    import yaml

    from rig import CATALOGUE
    from standins.ollama_server import OllamaStandin

    with OllamaStandin(dict(CATALOGUE)) as gpu_1, OllamaStandin(dict(CATALOGUE)) as gpu_2:
        servers_file = tmp_path / "servers.yaml"
        servers_file.write_text(yaml.safe_dump({"servers": [
            {"name": "gpu-1", "url": gpu_1.url, "labels": {"gpu": "a100"}},
            {"name": "gpu-2", "url": gpu_2.url, "labels": {"gpu": "l4"}}]}))
        rig = ApiRig(tmp_path, ollama, api_key=None, extra_args=("--servers-file", str(servers_file)))
        rig.work.model("default", "llama3.2", "1b")
        rig.work.model("default", "gemma3", "1b", extra="servers:\n  matchLabels: {gpu: a100}\n")
        rig.seed()
        console_errors(driver)
        try:
            ready_page(rig, driver)
            driver.execute_script("window.notReloaded = true")
            servers = lambda: driver.execute_script(  # noqa: E731
                "return [...document.querySelectorAll('#servers tr[data-server]')]"
                ".map(r => [...r.children].map(c => c.textContent))")
            eventually(lambda: [row[0] for row in servers()] == ["default", "gpu-1", "gpu-2"], timeout=30)
            by_name = {row[0]: row for row in servers()}
            assert by_name["gpu-1"][1] == gpu_1.url and by_name["gpu-1"][2] == "reachable"
            assert by_name["gpu-1"][5] == "2 Ready" and by_name["gpu-2"][5] == "1 Ready"  # the endpoint's counts
            heads = driver.execute_script("return [...document.querySelectorAll('#models-head th')].map(th => th.textContent)")
            assert [h for h in heads if h.startswith("Server ")] == ["Server default", "Server gpu-1", "Server gpu-2"]
            cells = lambda key: driver.execute_script(  # noqa: E731
                "return [...document.querySelectorAll(`tr[data-key=\"${arguments[0]}\"] td`)].map(td => td.textContent)",
                key)
            assert cells("default/gemma3-1b")[8:11] == ["not placed", "Ready", "not placed"]
            assert cells("default/llama3.2-1b")[8:11] == ["Ready", "Ready", "Ready"]
            driver.execute_script("const s = document.getElementById('filter-server'); s.value = 'gpu-2';"
                                  "s.dispatchEvent(new Event('input'))")
            eventually(lambda: list(rows(driver)) == ["default/llama3.2-1b"], timeout=10)
            shoot(driver, "fleet")

            # A new model: held mid-pull on gpu-1 (its bar in gpu-1's column), refused by gpu-2, now down.
            gate = gpu_1.hold_pulls()
            gpu_2.stop()
            rig.work.model("default", "phi3", "mini")
            rig.work.commit("add phi3")
            rig.work.push()
            rig.running.repository.refresh()
            cycle = threading.Thread(target=rig.running.service.run_cycle)
            cycle.start()
            try:
                bar = ("const p = document.querySelector('tr[data-key=\"default/phi3-mini\"] progress[aria-label*=\"on gpu-1\"]');"
                       "return p ? p.value : null")
                eventually(lambda: (v := driver.execute_script(bar)) is not None and v < 100, timeout=30)
            finally:
                gate.release()
                cycle.join(timeout=60)
            assert rig.running.service.reconciler.pulls.wait(timeout=30)
            rig.running.service.run_cycle()  # records the pulls; lists gpu-2, which does not answer
            eventually(lambda: {row[0]: row[2] for row in servers()}.get("gpu-2") == "unreachable", timeout=30)
            assert "not reachable" in {row[0]: row[6] for row in servers()}["gpu-2"]
            eventually(lambda: rows(driver).get("default/phi3-mini") == "Failed", timeout=30)
            assert cells("default/phi3-mini")[8:11] == ["Ready", "Ready", "Failed"]
            # The counts are read again when a model's state on a server changes (the pull to gpu-2
            # fails after the cycle has ended), not only at a cycle's end.
            eventually(lambda: {row[0]: row[5] for row in servers()}.get("gpu-2") == "1 Ready, 1 Failed", timeout=30)
            assert driver.execute_script("return window.notReloaded") is True
            assert console_errors(driver) == []
        finally:
            driver.get("about:blank")
            rig.stop()


def test_a_slow_pull_shows_its_progress_moving_then_ready_without_a_reload(serve: ApiRig, driver) -> None:
    ready_page(serve, driver)
    driver.execute_script("window.notReloaded = true")
    # Added through the page: the form's commit is shown, then a cycle starts the (slow) pull.
    head = remote_head(serve)
    driver.find_element("id", "add-tag").send_keys("not a tag")
    driver.find_element("id", "add-name").send_keys("phi3")
    driver.find_element("id", "add-submit").click()
    eventually(lambda: "does not match" in text(driver, "add-error"), timeout=10)
    assert remote_head(serve) == head  # refused in the page, by the schema the API serves: nothing was sent
    driver.find_element("id", "add-tag").clear()
    driver.find_element("id", "add-tag").send_keys("mini")
    driver.find_element("id", "add-submit").click()
    eventually(lambda: "added in commit" in text(driver, "notice"), timeout=30)
    assert "models/default/phi3-mini.yaml" in remote_files(serve)
    serve.ollama.set_pull_delay(0.4)
    cycle = threading.Thread(target=serve.running.service.run_cycle)
    cycle.start()
    bar = "const p = document.querySelector('tr[data-key=\"default/phi3-mini\"] progress'); return p ? p.value : null"
    first = eventually(lambda: (v := driver.execute_script(bar)) is not None and 0 < v < 100 and v, timeout=60)
    shoot(driver, "pulling")
    eventually(lambda: (v := driver.execute_script(bar)) is not None and v != first, timeout=60)
    eventually(lambda: rows(driver).get("default/phi3-mini") == "Ready", timeout=60)
    cycle.join(timeout=60)
    assert driver.execute_script("return window.notReloaded") is True
    assert console_errors(driver) == []


def test_refresh_makes_a_commit_and_delete_asks_first(serve: ApiRig, driver) -> None:
    ready_page(serve, driver)
    before = remote_head(serve)
    click(driver, 'button[data-action="refresh"][data-key="default/llama3.2-1b"]')
    eventually(lambda: "Refresh of default/llama3.2-1b requested in commit" in text(driver, "notice"), timeout=30)
    after = remote_head(serve)
    assert after != before
    shown = driver.execute_script("return document.querySelector('#notice code').title")
    assert shown == after
    refreshed = subprocess.run(["git", "-C", str(serve.remote), "show", f"{after}:models/default/llama3.2-1b.yaml"],
                               capture_output=True, text=True, check=True).stdout
    assert "refreshRequestedAt" in refreshed

    delete = 'button[data-action="delete"][data-key="default/gemma3-1b"]'
    click(driver, delete)
    confirmation = alert(driver)
    assert "default/gemma3-1b" in confirmation.text and "gemma3:1b" in confirmation.text
    confirmation.dismiss()
    eventually(lambda: "cancelled" in text(driver, "notice"), timeout=10)
    assert remote_head(serve) == after and "models/default/gemma3-1b.yaml" in remote_files(serve)
    click(driver, delete)
    alert(driver).accept()
    eventually(lambda: "default/gemma3-1b deleted in commit" in text(driver, "notice"), timeout=30)
    assert "models/default/gemma3-1b.yaml" not in remote_files(serve)
    assert console_errors(driver) == []


def test_with_a_key_the_page_asks_once_and_keeps_it_in_session_storage_only(tmp_path: Path, ollama, driver) -> None:
    rig = ApiRig(tmp_path, ollama, api_key=API_KEY)
    rig.seed(("llama3.2", "1b"))
    rig.start()
    try:
        driver.get(f"{rig.url}/")
        eventually(lambda: driver.execute_script("return document.getElementById('key-dialog').open"), timeout=30)
        shoot(driver, "key-prompt")
        field = driver.find_element("id", "key-input")
        field.send_keys("wrong-key")
        driver.find_element("id", "key-submit").click()
        eventually(lambda: "refused" in text(driver, "key-error"), timeout=30)
        field.send_keys(API_KEY)
        driver.find_element("id", "key-submit").click()
        eventually(lambda: "default/llama3.2-1b" in rows(driver), timeout=30)
        eventually(lambda: driver.execute_script("return document.body.dataset.connection") == "live", timeout=30)
        stored = driver.execute_script("return [sessionStorage.getItem('ollama-gitops.apiKey'), localStorage.length,"
                                       " document.cookie, location.href]")
        assert stored[0] == API_KEY and stored[1] == 0 and stored[2] == "" and API_KEY not in stored[3]
        driver.refresh()  # the same tab: asked once
        eventually(lambda: "default/llama3.2-1b" in rows(driver), timeout=30)
        assert not driver.execute_script("return document.getElementById('key-dialog').open")
        driver.execute_script("sessionStorage.clear()")
    finally:
        driver.get("about:blank")
        rig.stop()


def test_a_file_problem_appears_with_its_path_and_line(serve: ApiRig, driver) -> None:
    ready_page(serve, driver)
    broken = serve.work.path / "models/default/broken-1.yaml"
    broken.write_text('name: broken\ntag: 1.10\n')
    serve.publish("a broken file")
    (problem,) = serve.client.get("/api/v1/status").json()["problems"]
    expected = f"{problem['path']}:{problem['line']}"
    assert expected == "models/default/broken-1.yaml:2"
    eventually(lambda: expected in text(driver, "problems"), timeout=30)
    assert problem["message"] in text(driver, "problems")
    shoot(driver, "sync-and-problems")


def test_the_events_stream_survives_a_reconnect(serve: ApiRig, driver) -> None:
    ready_page(serve, driver)
    driver.execute_script("window.notReloaded = true; window.ollamaGitops.reconnect()")
    eventually(lambda: driver.execute_script("return document.body.dataset.connection") == "polling", timeout=30)
    eventually(lambda: driver.execute_script("return document.body.dataset.connection") == "live", timeout=30)
    serve.work.model("default", "qwen2.5", "0.5b")
    serve.publish("one more")
    eventually(lambda: rows(driver).get("default/qwen2.5-0.5b") == "Ready", timeout=30)
    assert driver.execute_script("return window.notReloaded") is True
    assert console_errors(driver) == []


def test_a_page_left_for_another_lets_its_stream_go(serve: ApiRig, driver) -> None:
    # The browser keeps a page it leaves in its back-forward cache for minutes, stream and all; the
    # server has a bounded number of streams, so the page lets its own go when it is hidden.
    serve.event_heartbeat = 1.0  # the server sees a closed stream at its next write
    ready_page(serve, driver)
    bus = serve.running.feed.bus
    assert bus.subscribers == 1
    driver.get("about:blank")
    eventually(lambda: bus.subscribers == 0, timeout=20, what="the left page's stream closed")
