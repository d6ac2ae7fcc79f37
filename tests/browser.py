"""A real headless browser for tests: Debian's chromium, driven over the DevTools protocol
(websocket-client). No browser is downloaded; without chromium the caller skips, saying so.

The stack's certificate is trusted by its public key (--ignore-certificate-errors-spki-list),
so the pages load over the same TLS a user gets, without touching any system trust store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((p for c in CHROMIUM if (p := shutil.which(c))), None)


def spki_hash(cert_pem: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class Browser:
    """One headless chromium with one page; `goto` returns the load time in seconds."""

    def __init__(self, binary: str, trust_cert: Path | None = None, width: int = 1280,
                 height: int = 900) -> None:
        import websocket

        self.dir = Path(tempfile.mkdtemp(prefix="vidrec-chromium-"))
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking",
                f"--user-data-dir={self.dir}", "--remote-debugging-port=0",
                f"--window-size={width},{height}", "about:blank"]
        if trust_cert is not None:
            args.insert(1, f"--ignore-certificate-errors-spki-list={spki_hash(trust_cert)}")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.dir / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60,
                                              suppress_origin=True)
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def _wait_event(self, name: str, timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, e in enumerate(self.events):
                if e.get("method") == name:
                    return self.events.pop(i)
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(name)

    def goto(self, url: str) -> float:
        """Navigate and wait for the load event; the seconds it took."""
        self.events.clear()
        t0 = time.perf_counter()
        self.send("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")
        return time.perf_counter() - t0

    def js(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:60]}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def submit(self, form_selector: str, values: dict[str, str]) -> float:
        """Fill a form's fields by name, submit it, wait for the next page's load."""
        self.events.clear()
        sets = "".join(f"f.elements[{json.dumps(k)}].value = {json.dumps(v)};"
                       for k, v in values.items())
        t0 = time.perf_counter()
        self.js(f"(() => {{ const f = document.querySelector({json.dumps(form_selector)});"
                f"{sets} f.submit(); }})()")
        self._wait_event("Page.loadEventFired")
        return time.perf_counter() - t0

    def text(self) -> str:
        return str(self.js("document.body.innerText"))

    def url(self) -> str:
        return str(self.js("location.href"))

    def screenshot(self, path: Path) -> None:
        height = int(self.js("document.documentElement.scrollHeight") or 900)
        self.send("Emulation.setDeviceMetricsOverride", width=1280, height=min(height, 2400),
                  deviceScaleFactor=1, mobile=False)
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        self.send("Emulation.clearDeviceMetricsOverride")

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.dir, ignore_errors=True)
