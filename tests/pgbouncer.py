"""A PgBouncer of the test run's own, in transaction-pooling mode, in front of PostgreSQL.

Debian's ``pgbouncer`` runs on a free port of 127.0.0.1 with its config, log and pid file
in a temporary folder, as the ``postgres`` user (it refuses to run as root), with a server
pool far smaller than the number of clients the tests open: every statement a store sends
must work when consecutive transactions land on different server connections.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

BINARY = "/usr/sbin/pgbouncer"
#: Server connections per database and user: small, so that the pool is really shared.
POOL_SIZE = 4


class PgBouncer:
    """Start with :meth:`start`, which returns the URL to use; :meth:`stop` ends it."""

    def __init__(self, postgres_url: str) -> None:
        self.upstream = urlsplit(postgres_url)
        self.folder: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        if not os.path.exists(BINARY):
            raise RuntimeError(f"{BINARY} is missing: apt-get install pgbouncer")
        owner = pwd.getpwnam("postgres")
        self.folder = Path(tempfile.mkdtemp(prefix="ss-pgbouncer-"))
        port = _free_port()
        database = self.upstream.path.lstrip("/")
        config = self.folder / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"{database} = host={self.upstream.hostname} port={self.upstream.port or 5432} "
            f"dbname={database} user={self.upstream.username or 'postgres'}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = any\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {POOL_SIZE}\n"
            "max_client_conn = 2000\n"
            f"logfile = {self.folder}/pgbouncer.log\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        os.chown(config, owner.pw_uid, owner.pw_gid)
        command = [BINARY, str(config)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {self.log()}") from None
                time.sleep(0.05)
        user = self.upstream.username or "postgres"
        return f"postgresql://{user}@127.0.0.1:{port}/{database}"

    def log(self) -> str:
        path = self.folder / "pgbouncer.log" if self.folder else None
        return path.read_text()[-2000:] if path and path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
