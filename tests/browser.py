"""A page as headless Chromium loads it, offline: script errors, failed loads, broken images and a screenshot.

Chromium is driven through the DevTools protocol over a pipe (`--remote-debugging-pipe`: JSON messages ended by
a NUL byte, commands on file descriptor 3, answers and events on 4), so no port, driver or extra package is
needed. The network is switched off before the page loads.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
BROKEN_IMAGES = "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)"


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@dataclass
class Load:
    errors: list[str] = field(default_factory=list)         # uncaught script errors and console errors
    failed: list[str] = field(default_factory=list)         # requests that failed (the network is off)
    broken_images: list[str] = field(default_factory=list)  # the alt text of each image that did not decode
    images: int = 0
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, browser: str, profile: str):
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # the child's fds 3 and 4 must be these two pipes: dup them there in the child (before it closes the rest)
        def child_fds():
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, answers_write)]  # out of 3's way
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [browser, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,2000", "about:blank"],
            preexec_fn=child_fds, pass_fds=(3, 4),  # kept open after preexec_fn made them
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(answers_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        while True:
            message = self._message(deadline)
            if message.get("method") == method:
                return message
            self.events.append(message)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._commands)
        os.close(self._answers)


def load(page: Path, browser: str) -> Load:
    """Open `page` offline in headless Chromium, wait for its load event, and report what went wrong."""
    with tempfile.TemporaryDirectory() as profile:
        pipe = _Pipe(browser, profile)
        try:
            target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Network", "Log"):
                pipe.call(f"{domain}.enable", session)
            pipe.call("Network.emulateNetworkConditions", session, offline=True, latency=0,
                      downloadThroughput=0, uploadThroughput=0)
            pipe.call("Page.navigate", session, url=page.resolve().as_uri())
            pipe.wait_for("Page.loadEventFired")
            result = Load()
            images = pipe.call("Runtime.evaluate", session, expression=BROKEN_IMAGES, returnByValue=True)
            result.broken_images = images["result"]["value"]
            result.images = pipe.call("Runtime.evaluate", session, expression="document.images.length",
                                      returnByValue=True)["result"]["value"]
            shot = pipe.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=False)
            result.screenshot = base64.b64decode(shot["data"])
            urls = {event["params"]["requestId"]: event["params"]["request"]["url"] for event in pipe.events
                    if event.get("method") == "Network.requestWillBeSent"}
            for event in pipe.events:
                params = event.get("params", {})
                if event.get("method") == "Runtime.exceptionThrown":
                    details = params["exceptionDetails"]
                    result.errors.append(details.get("exception", {}).get("description") or details["text"])
                elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                    result.errors.append(params["entry"]["text"])
                elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
                    result.errors.append(str(params["args"]))
                elif event.get("method") == "Network.loadingFailed":
                    result.failed.append(f"{urls.get(params['requestId'], '?')}: {params.get('errorText')}")
            return result
        finally:
            pipe.close()
