"""The floor: the least work any secure database-backed session store must do.

Written by hand over the raw DB-API driver, as a yardstick, not as part of the library:
one SELECT by the hashed id's primary key per read (expiry checked), one versioned UPDATE
per write (payload, expiry, version), AES-256-GCM on the payload, JSON for the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

IDLE_MS = 14 * 86400 * 1000


def connect(url: str) -> tuple[Any, str]:
    """Open a raw driver connection in autocommit mode; return it and its parameter mark."""
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        conn = sqlite3.connect(parts.path[1:], isolation_level=None, timeout=5)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("PRAGMA synchronous=normal")
        return conn, "?"
    if parts.scheme.startswith("postgres"):
        import psycopg2

        conn = psycopg2.connect(
            dbname=parts.path[1:],
            user=parts.username,
            password=parts.password,
            host=parts.hostname,
            port=parts.port or 5432,
        )
        conn.autocommit = True
        return conn, "%s"
    import pymysql

    conn = pymysql.connect(
        database=parts.path[1:],
        user=parts.username,
        password=parts.password or "",
        host=parts.hostname,
        port=parts.port or 3306,
        autocommit=True,
    )
    return conn, "%s"


class Floor:
    """A minimal encrypted session table driven with raw SQL."""

    def __init__(self, url: str, table: str) -> None:
        self.conn, p = connect(url)
        self.table = table
        self.kind = urlsplit(url).scheme.split("+")[0]
        blob = {"sqlite": "BLOB", "postgresql": "BYTEA", "postgres": "BYTEA"}.get(
            self.kind, "LONGBLOB"
        )
        self.cursor = self.conn.cursor()
        self.cursor.execute(f"DROP TABLE IF EXISTS {table}")
        self.cursor.execute(
            f"CREATE TABLE {table} (sid CHAR(64) PRIMARY KEY, payload {blob} NOT NULL, "
            "expires_at BIGINT NOT NULL, version BIGINT NOT NULL)"
        )
        self.cursor.execute(f"CREATE INDEX {table}_expires ON {table} (expires_at)")
        self.aead = AESGCM(os.urandom(32))
        self.select = f"SELECT payload, expires_at, version FROM {table} WHERE sid = {p}"
        self.update = (
            f"UPDATE {table} SET payload = {p}, expires_at = {p}, "
            f"version = version + 1 WHERE sid = {p} AND version = {p}"
        )
        self.insert = f"INSERT INTO {table} VALUES ({p}, {p}, {p}, 1)"

    def _seal(self, data: dict[str, Any], sid: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, json.dumps(data).encode(), sid.encode())

    def add(self, public_ids: list[str], data: dict[str, Any]) -> None:
        """Store a session under each public id."""
        expires = int(time.time() * 1000) + IDLE_MS
        rows = []
        for public_id in public_ids:
            sid = hashlib.sha256(public_id.encode()).hexdigest()
            rows.append((sid, self._seal(data, sid), expires))
        self.cursor.executemany(self.insert, rows)

    def read(self, public_id: str) -> tuple[str, dict[str, Any], int] | None:
        """Load one session: SELECT by primary key, check expiry, decrypt, parse."""
        sid = hashlib.sha256(public_id.encode()).hexdigest()
        self.cursor.execute(self.select, (sid,))
        row = self.cursor.fetchone()
        if row is None or row[1] <= time.time() * 1000:
            return None
        payload = bytes(row[0])
        data = json.loads(self.aead.decrypt(payload[:12], payload[12:], sid.encode()))
        return sid, data, row[2]

    def write(self, public_id: str, key: str, value: Any) -> None:
        """Load, change one key, and save with one versioned UPDATE."""
        found = self.read(public_id)
        assert found is not None
        sid, data, version = found
        data[key] = value
        expires = int(time.time() * 1000) + IDLE_MS
        self.cursor.execute(self.update, (self._seal(data, sid), expires, sid, version))
        assert self.cursor.rowcount == 1

    def drop(self) -> None:
        self.cursor.execute(f"DROP TABLE IF EXISTS {self.table}")
        self.conn.close()
