"""A MariaDB Galera Cluster of three nodes on this host, for the tests and scripts/galera.sh.

Debian's ``galera-4`` with the installed MariaDB: three ``mariadbd --no-defaults`` processes
(so ``/etc/mysql`` is never read), each with its own data directory, socket, client port and
Galera ports, all on 127.0.0.1 and all picked free at start; state transfers by rsync, and
buffers small enough to sit beside everything else on a small machine. The system server on
3306 and its ``/var/lib/mysql`` are never touched. Only the standard library and the
``mariadb`` command-line client are used, so the script can run it without the venv:

    python3 tests/galera.py start DIR   # prints one URL per node, leaves the nodes running
    python3 tests/galera.py stop DIR    # SIGTERM each node, wait, remove DIR
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"
CLIENT = "/usr/bin/mariadb"
PROVIDER = "/usr/lib/galera/libgalera_smm.so"
NODES = 3
DATABASE = "test"
#: Seconds a node may take to start and reach Synced (a cold start takes about 15 s here).
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


class ClusterError(RuntimeError):
    """The cluster (or one node of it) did not start or answer."""


def _free_ports(count: int) -> list[int]:
    # Hold every probe open until all are picked, so that no port is handed out twice.
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class Node:
    """One ``mariadbd`` of the cluster: its folder, its four ports and its process."""

    def __init__(self, cluster: Cluster, number: int, ports: list[int]) -> None:
        self.cluster = cluster
        self.number = number
        self.port, self.gcomm, self.ist, self.sst = ports
        self.folder = cluster.folder / f"node{number}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.folder / "mysqld.sock"

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{DATABASE}"

    def arguments(self) -> list[str]:
        gcomm = ",".join(f"127.0.0.1:{node.gcomm}" for node in self.cluster.nodes)
        provider_options = (
            f"gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm};ist.recv_addr=127.0.0.1:{self.ist};"
            "gcache.size=32M"
        )
        arguments = [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.folder / 'data'}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.folder / 'mysqld.pid'}",
            f"--log-error={self.folder / 'error.log'}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--wsrep-on=ON",
            f"--wsrep-provider={PROVIDER}",
            "--wsrep-cluster-name=storedsession-test",
            f"--wsrep-cluster-address=gcomm://{gcomm}",
            f"--wsrep-node-name=node{self.number}",
            "--wsrep-node-address=127.0.0.1",
            f"--wsrep-node-incoming-address=127.0.0.1:{self.port}",
            f"--wsrep-provider-options={provider_options}",
            f"--wsrep-sst-receive-address=127.0.0.1:{self.sst}",
            "--wsrep-sst-method=rsync",
            "--binlog-format=ROW",
            "--innodb-autoinc-lock-mode=2",
            "--default-storage-engine=InnoDB",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            # Durability comes from the other two nodes; the disk is shared with other work.
            "--innodb-flush-log-at-trx-commit=0",
            "--performance-schema=OFF",
            "--max-connections=300",
        ]
        if os.geteuid() == 0:
            arguments.append("--user=mysql")
        return arguments

    def start(self, new_cluster: bool = False, position: str | None = None) -> None:
        """Start the process (it joins, or with ``new_cluster`` bootstraps, the cluster)."""
        arguments = self.arguments()
        if new_cluster:
            arguments.append("--wsrep-new-cluster")
        if position:
            arguments.append(f"--wsrep-start-position={position}")
        self.process = subprocess.Popen(
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives `galera.py start`; no terminal signals
        )

    def recovered_position(self) -> str | None:
        """Return the last position a killed node committed (what mysqld_safe recovers).

        Started with it, the node asks its peers for the write-sets it missed (IST)
        instead of a copy of a whole data directory.
        """
        log = self.folder / "recover.log"
        arguments = [a for a in self.arguments() if not a.startswith("--log-error=")]
        subprocess.run(
            [*arguments, "--wsrep-recover", f"--log-error={log}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=START_TIMEOUT,
            check=False,
        )
        found = re.findall(r"Recovered position: (\S+:-?\d+)", log.read_text(errors="replace"))
        return found[-1] if found and not found[-1].endswith(":-1") else None

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid if self.process.poll() is None else None
        try:
            return int((self.folder / "mysqld.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def query(self, sql: str) -> list[list[str]]:
        """Run ``sql`` through the node's socket; return the rows (``ClusterError`` if down)."""
        try:
            done = subprocess.run(
                [CLIENT, "--no-defaults", "-uroot", f"--socket={self.socket_path}", "-N", "-B"],
                input=sql.encode(),
                capture_output=True,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"node{self.number} did not answer {sql!r}") from None
        if done.returncode != 0:
            raise ClusterError(f"node{self.number}: {done.stderr.decode(errors='replace')}")
        return [line.split("\t") for line in done.stdout.decode().splitlines()]

    def status(self) -> dict[str, str]:
        rows = self.query(
            "SHOW STATUS WHERE Variable_name IN "
            "('wsrep_cluster_size', 'wsrep_local_state_comment', 'wsrep_ready')"
        )
        return {row[0]: row[1] for row in rows if len(row) == 2}

    def wait_synced(self, cluster_size: int, timeout: float = START_TIMEOUT) -> None:
        """Wait until this node is Synced in a cluster of ``cluster_size`` nodes."""
        deadline = time.monotonic() + timeout
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            if not self.running():
                raise ClusterError(f"node{self.number} exited:\n{self.log()}")
            try:
                status = self.status()
            except ClusterError:
                status = {}
            if (
                status.get("wsrep_local_state_comment") == "Synced"
                and status.get("wsrep_ready") == "ON"
                and status.get("wsrep_cluster_size") == str(cluster_size)
            ):
                return
            time.sleep(0.2)
        raise ClusterError(f"node{self.number} is not Synced ({status}):\n{self.log()}")

    def kill(self) -> None:
        """End the process at once (SIGKILL), as a crash would."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """Stop the process cleanly (SIGTERM), or kill it if it does not stop in time."""
        pid = self.pid()
        if pid is None or not self.running():
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.running() and time.monotonic() < deadline:
            if self.process is not None:
                self.process.poll()
            time.sleep(0.1)
        if self.running():
            os.kill(pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)
        else:
            deadline = time.monotonic() + STOP_TIMEOUT
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.1)

    def log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


class Cluster:
    """Three nodes under ``folder``: :meth:`start`, :meth:`stop`, and kill or restart one."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).resolve()
        self.nodes: list[Node] = []

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> list[str]:
        """Create, bootstrap and join the three nodes; return one URL per node."""
        for program in (MARIADBD, INSTALL_DB, CLIENT, PROVIDER, "/usr/bin/rsync"):
            if not os.path.exists(program):
                raise ClusterError(f"{program} is missing: apt-get install galera-4 rsync")
        if (self.folder / "cluster.json").exists():
            raise ClusterError(f"{self.folder} already holds a cluster; stop it first.")
        ports = _free_ports(4 * NODES)
        self.nodes = [Node(self, n + 1, ports[4 * n : 4 * n + 4]) for n in range(NODES)]
        self.folder.mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam("mysql") if os.geteuid() == 0 else None
        for node in self.nodes:
            (node.folder / "data").mkdir(parents=True, exist_ok=True)
        if owner is not None:
            for path in [
                self.folder,
                *(p for n in self.nodes for p in (n.folder, n.folder / "data")),
            ]:
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._save()
        first = self.nodes[0]
        install = [
            INSTALL_DB,
            "--no-defaults",
            f"--datadir={first.folder / 'data'}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]
        if owner is not None:
            install.append("--user=mysql")
        done = subprocess.run(install, capture_output=True, timeout=START_TIMEOUT, check=False)
        if done.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed: {done.stderr.decode()[-2000:]}")
        first.start(new_cluster=True)
        self._save()
        first.wait_synced(1)
        first.query(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        # One joiner at a time: each copies the donor's data directory (rsync SST).
        for size, node in enumerate(self.nodes[1:], start=2):
            node.start()
            self._save()
            node.wait_synced(size)
        for node in self.nodes:
            node.wait_synced(NODES)
        return self.urls

    def kill(self, number: int) -> None:
        """SIGKILL node ``number`` (1-based); return once the others have evicted it.

        Restarted before that, the node meets its own old identity in the group, and
        joining takes several seconds longer, during which the whole cluster waits.
        """
        self.nodes[number - 1].kill()
        for node in self.nodes:
            if node.number != number:
                node.wait_synced(NODES - 1)

    def restart(self, number: int) -> None:
        """Start node ``number`` again from its recovered position; wait until it is Synced."""
        node = self.nodes[number - 1]
        node.start(position=node.recovered_position())
        self._save()
        node.wait_synced(NODES)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then wait) and remove the folder."""
        if not self.nodes:
            self._load()
        for node in reversed(self.nodes):
            with contextlib.suppress(OSError):
                node.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _save(self) -> None:
        state = {
            "nodes": [
                {"ports": [n.port, n.gcomm, n.ist, n.sst], "pid": n.pid()} for n in self.nodes
            ]
        }
        (self.folder / "cluster.json").write_text(json.dumps(state))

    def _load(self) -> None:
        try:
            state = json.loads((self.folder / "cluster.json").read_text())
        except (OSError, ValueError):
            return
        self.nodes = [
            Node(self, number, entry["ports"])
            for number, entry in enumerate(state["nodes"], start=1)
        ]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: galera.py start DIR | stop DIR", file=sys.stderr)
        return 2
    cluster = Cluster(argv[1])
    if argv[0] == "stop":
        cluster.stop()
        return 0
    try:
        for url in cluster.start():
            print(url)
    except ClusterError as exc:
        print(f"galera: {exc}", file=sys.stderr)
        cluster.stop()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
