"""Drive Debian's headless Chromium over the DevTools protocol: console errors, network requests,
JavaScript evaluation and screenshots, for the dashboard and the monitor report tests."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket


def chromium_path() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium is required for this test (make test installs it)"
    return exe


class Browser:
    """One headless Chromium with one page. ``offline=True``: every request outside 127.0.0.1 fails."""

    def __init__(self, profile: Path, offline: bool = True, size=(1400, 1800)):
        args = [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--remote-debugging-port=0",
                f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"]
        if offline:  # no route anywhere but loopback: a dead proxy for everything else
            args[1:1] = ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost",
                         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self._id = 0
        self.console: list[dict] = []
        self.exceptions: list[str] = []
        self.requests: list[str] = []
        self.failed: list[tuple[str, str]] = []
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")

    def _event(self, msg: dict) -> None:
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.consoleAPICalled":
            self.console.append({"type": p["type"], "text": " ".join(str(a.get("value", a.get("description", "")))
                                                                     for a in p.get("args", []))})
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.exceptions.append(d.get("exception", {}).get("description") or d.get("text", ""))
        elif m == "Log.entryAdded":
            e = p["entry"]
            if e["level"] == "error":
                self.console.append({"type": "error", "text": f"{e.get('source')}: {e['text']} {e.get('url', '')}"})
        elif m == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])
        elif m == "Network.loadingFailed":
            self.failed.append((p.get("requestId"), p.get("errorText")))

    def call(self, method: str, **params):
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 60) -> float:
        """Navigate and wait until the JavaScript ``ready`` is true; return the seconds it took."""
        t0 = time.monotonic()
        self.call("Page.navigate", url=url)
        while time.monotonic() - t0 < timeout:
            if self.exceptions:
                raise RuntimeError(f"{url}: JavaScript error: {self.exceptions[0]}")
            try:
                if self.evaluate(ready):
                    return time.monotonic() - t0
            except RuntimeError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{url}: not ready after {timeout} s ({ready})")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> list[str]:
        return self.exceptions + [c["text"] for c in self.console if c["type"] in ("error", "assert")]

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing what may not have opened
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
