"""gunicorn with two workers, with and without ``--preload``, on every URL form.

Each client keeps its own session and counts; every count must come out exact, both
workers must have served, and the server's log must hold no traceback and no warning
(a worker reading another's rows would log "could not be decrypted").

The app is not a tests/fronts.py front: gunicorn imports it by name in processes of its
own (tests/prefork_app.py), and it is written the way the README shows (the plugin built
from a URL, the table created at import), which is what ``--preload`` must survive.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from storedsession import SessionStore

from .support import backend_url

pytestmark = pytest.mark.slow

FORMS = {
    "sqlite": ("sqlite", ""),
    "postgresql": ("postgres", ""),
    "postgresql+pool": ("postgres", "+pool"),
    "mysql": ("mysql", ""),
    "mysql+pool": ("mysql", "+pool"),
}
CLIENTS, REQUESTS = 4, 40
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, cookie: str | None) -> tuple[int, dict[str, Any], str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/count", headers={"Cookie": cookie} if cookie else {})
        response = connection.getresponse()
        body = response.read()
        set_cookie = response.getheader("Set-Cookie")
        pair = set_cookie.split(";", 1)[0] if set_cookie else cookie
        return response.status, json.loads(body) if response.status == 200 else {}, pair
    finally:
        connection.close()


def _until_both_workers_answer(port: int) -> None:
    """Wait until both workers serve (without --preload each loads the app on its own, and
    a fast run could otherwise be over before the second one takes a request)."""
    deadline = time.monotonic() + 30
    answered: set[str] = set()
    while len(answered) < 2:
        assert time.monotonic() < deadline, f"only workers {answered} ever answered"
        with ThreadPoolExecutor(4) as pool:  # a sync worker serves one request at a time
            answered |= {
                body["worker"] for _, body, _ in pool.map(lambda _: get(port, None), range(4))
            }


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
@pytest.mark.parametrize("form", list(FORMS))
def test_gunicorn_workers_never_share_connections(form, preload, tmp_path, keys) -> None:
    backend, suffix = FORMS[form]
    scheme, rest = backend_url(backend, tmp_path).split("://", 1)
    url = f"{scheme}{suffix}://{rest}"
    table = f"ss_prefork_{uuid.uuid4().hex[:12]}"
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "PREFORK_URL": url, "PREFORK_TABLE": table, "STOREDSESSION_KEYS": keys[0]}
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}"]
    command += ["--preload"] if preload else []
    command += ["tests.prefork_app:app"]
    with log.open("w") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        _until_both_workers_answer(port)
        results: dict[int, list[Any]] = {}

        def client(number: int) -> None:
            seen: list[Any] = []
            cookie = None
            try:
                for _ in range(REQUESTS):
                    status, body, cookie = get(port, cookie)
                    seen.append((status, body.get("n"), body.get("worker")))
            except OSError as exc:
                seen.append((repr(exc), None, None))
            results[number] = seen

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        store = SessionStore(url, keys=keys, table_name=table)
        store.drop_table()
        store.close()
    text = log.read_text()
    assert "Traceback" not in text and "WARNING" not in text, text[-3000:]
    assert sorted(results) == list(range(CLIENTS))
    for seen in results.values():
        assert [status for status, _, _ in seen] == [200] * REQUESTS, (seen, text[-3000:])
        assert [n for _, n, _ in seen] == list(range(1, REQUESTS + 1))
    workers = {worker for seen in results.values() for _, _, worker in seen}
    assert len(workers) == 2
