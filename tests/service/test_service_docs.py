"""``/docs`` and ``/redoc`` work offline (issue 27, item 5): headless Chromium, driven over its
DevTools protocol, opens each page of a real server; the page must list the ``/v1/predict``
operation, and every request the browser sent must have gone to 127.0.0.1 (the assets come from
the installed ``fastapi-offline`` package, not a CDN; ReDoc's link to its logo on cdn.redoc.ly is
refused by the page's Content-Security-Policy before it is sent).

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped, saying so, only where no chromium
binary exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from .test_service import ServerProcess, checkpoint  # noqa: F401 - checkpoint is a fixture

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-port=0"]


class DevTools:
    """One page of a headless Chromium over the DevTools protocol (websocket-client)."""

    def __init__(self, profile: Path) -> None:
        import websocket

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def text_of_page(self) -> str:
        return str(self.call("Runtime.evaluate", expression="document.body.innerText")["result"].get("value", ""))

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory) -> Iterator[ServerProcess]:
    proc = ServerProcess(checkpoint, tmp_path_factory.mktemp("logs") / "docs.log", "--no-access-log",
                         env={"EQUIFORMER_CALC_TOKEN": "secret"})  # the docs need no token
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_render_offline(server, page, tmp_path):
    browser = DevTools(tmp_path / "profile")
    try:
        browser.call("Network.enable")
        browser.call("Page.enable")
        browser.call("Page.navigate", url=server.url + page)
        deadline = time.monotonic() + 60
        text = ""
        while "/v1/predict" not in text and time.monotonic() < deadline:
            time.sleep(0.3)
            text = browser.text_of_page()
        assert "/v1/predict" in text, text[:2000]
        assert "equiformer-calc inference service" in text
        time.sleep(1.0)  # late requests (images) too
        browser.call("Runtime.evaluate", expression="1")
        sent = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in browser.events
                if e.get("method") == "Network.requestWillBeSent"}
        # requests the browser refused to send (the page's Content-Security-Policy) never left it
        blocked = {e["params"]["requestId"] for e in browser.events if e.get("method") == "Network.loadingFailed"
                   and e["params"].get("blockedReason") == "csp"}
    finally:
        browser.close()
    urls = list(sent.values())
    assert any(u.endswith((".js", ".css")) for u in urls), urls  # the assets were loaded ...
    elsewhere = [u for rid, u in sent.items() if urllib.parse.urlsplit(u).scheme not in ("data", "blob")
                 and urllib.parse.urlsplit(u).hostname != "127.0.0.1" and rid not in blocked]
    assert not elsewhere, elsewhere  # ... and from this server only
