"""The built site in headless Chromium (Debian's ``chromium``), offline: the start page, the API
entry of EquiformerCalculator and a tutorial render, with every image decoded (naturalWidth > 0),
and no request leaves file:// (or 127.0.0.1).

Chromium is driven over the DevTools protocol through a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no driver package and no port are
needed. CI installs the browser (``.ci/run``: ``apt-get install -y chromium chromium-driver``); the
test is skipped, saying so, only where no chromium binary exists.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
         "--allow-file-access-from-files", "--remote-debugging-pipe"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # copies at fd >= 10, so that putting them on 3 and 4 in the child cannot clobber one another
        high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)

        def wire() -> None:  # in the child, before exec: fd 3 = commands in, fd 4 = answers out
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for fd in (to_chrome_r, from_chrome_w, high_r, high_w):
            os.close(fd)
        self._next = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe: " + self.proc.stderr.read().decode()[-2000:])
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read(timeout)
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, session: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    self.events.remove(event)
                    return event
            self.events.append(self._read(max(0.1, deadline - time.monotonic())))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (CI installs Debian's chromium: apt-get install -y chromium)")
    tools = DevTools(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield tools
    tools.close()


def _render(browser: DevTools, url: str) -> tuple[dict[str, Any], list[str]]:
    """Open ``url`` in a fresh tab; return what the page shows and every URL it requested."""
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    browser.call("Network.enable", session)
    browser.call("Page.enable", session)
    browser.call("Page.navigate", session, url=url)
    browser.wait_for("Page.loadEventFired", session)
    state = browser.call(
        "Runtime.evaluate", session, returnByValue=True,
        expression="""JSON.stringify({
            title: document.title,
            text: document.body.innerText.length,
            images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, complete: i.complete,
                                                            width: i.naturalWidth})),
            ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
        })""",
    )["result"]["value"]
    requests = [e["params"]["request"]["url"] for e in browser.events
                if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session]
    browser.events = [e for e in browser.events if e.get("sessionId") != session]
    browser.call("Target.closeTarget", targetId=target)
    return json.loads(state), requests


def _offline(requests: list[str]) -> list[str]:
    allowed = ("file://", "data:", "about:", "http://127.0.0.1", "blob:")
    return [u for u in requests if not u.startswith(allowed)]


@pytest.mark.parametrize(
    "page, must_show, min_images",
    [
        ("index.html", None, 1),
        ("api/index.html", "equiformer_calc.EquiformerCalculator", 0),
        ("tutorials/tutorial_02_screen.html", None, 1),
    ],
)
def test_page_renders_offline_with_its_images(browser: DevTools, site: Path, page: str, must_show: str | None,
                                              min_images: int) -> None:
    shown, requests = _render(browser, (site / page).as_uri())
    assert shown["title"] and shown["text"] > 200, f"{page} rendered empty: {shown['title']!r}"
    assert len(shown["images"]) >= min_images, f"{page}: {len(shown['images'])} images"
    broken = [i["src"] for i in shown["images"] if not i["complete"] or i["width"] == 0]
    assert not broken, f"{page}: images that did not load: {broken}"
    if must_show:
        assert must_show in shown["ids"], f"{page} has no entry {must_show}"
    assert requests, "no request recorded: the network log is not working"
    assert not _offline(requests), f"{page} requested: {_offline(requests)}"
