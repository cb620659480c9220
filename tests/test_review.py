"""``rtautoplan review``: the suggest-mode page served on localhost, driven in headless Chromium
through the DevTools protocol (click Accept, the decision lands in the session; then Finish)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.folder import PlanOptions
from rtautoplan.review import ReviewServer, dvh_delta_svg, page
from rtautoplan.suggest import SuggestSession

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "prostate01"


@pytest.fixture
def server(tmp_path):
    options = PlanOptions(tps=lambda: InHousePhoton(n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=30,
                                                    cache_dir=tmp_path / "dij"), max_steps=2)
    server = ReviewServer(SuggestSession.open(SAMPLE, options, k=2), tmp_path / "plan")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class DevTools:
    """Headless Chromium with its DevTools protocol on a websocket: evaluate JavaScript in the page."""

    def __init__(self, chromium: str, url: str, profile: Path):
        self.proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = int(match.group(1)) if match else None
        assert port is not None, "Chromium did not open its DevTools port"
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=30).read())
        target = next(t for t in targets if t["type"] == "page")
        import websocket

        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.n = 0

    def evaluate(self, expression: str):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "returnByValue": True}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.n:
                return message["result"]["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_the_page_shows_the_what_ifs_side_by_side_without_a_browser(server):
    state = json.loads(urllib.request.urlopen(server.url + "state.json", timeout=120).read())
    html = urllib.request.urlopen(server.url, timeout=120).read().decode()
    assert state["status"] == "suggest" and html.count('id="suggestion-') == len(state["suggestions"]) == 2
    for i, s in enumerate(state["suggestions"]):
        assert f'id="accept-{i}"' in html and f'id="reject-{i}"' in html and s["action"] in html
    assert 'id="edit-action"' in html and "t_bla-" in html
    svg = dvh_delta_svg(state["suggestions"][0])
    assert svg.count("<polyline") == len(state["suggestions"][0]["dvh_delta"]) or "rejected" in svg


def test_a_bad_form_is_a_400_with_the_reason(server):
    request = urllib.request.Request(server.url + "decide", data=b"decision=approve&index=0", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=120)
    assert error.value.code == 400 and "not a decision" in error.value.read().decode()
    assert "not a decision" in page({"step": 1, "done": True, "suggestions": [], "uncertainty": {},
                                     "score": {"system": "proknow9", "current": 5.0}}, [], "x is not a decision")


@pytest.mark.tools
def test_accept_then_finish_in_headless_chromium(server, tool, tmp_path):
    chromium = tool("/usr/bin/chromium")
    browser = DevTools(chromium, server.url, tmp_path / "profile")
    try:
        assert browser.wait_for("document.querySelectorAll('.card svg polyline.dvh-delta').length") > 0
        first = browser.evaluate("document.querySelector('#suggestion-1 h3').textContent")
        browser.evaluate("document.querySelector('#accept-1').click()")
        assert "step 2" in browser.wait_for("document.querySelector('h1') && "
                                            "document.querySelector('h1').textContent.includes('step 2') && "
                                            "document.querySelector('h1').textContent")
        step = server.session.steps[0]
        assert step.override == "accepted" and step.action == first.split(". ", 1)[1]
        browser.evaluate("document.querySelector('#finish').click()")
        assert browser.wait_for("document.querySelector('#finished') && "
                                "document.querySelector('#finished').textContent").count("UNAPPROVED") == 1
    finally:
        browser.close()
    log = json.loads((tmp_path / "plan" / "plan_log.json").read_text())
    assert log["overrides"] == [{"step": 1, "action": step.action, "decision": "accepted"}]
