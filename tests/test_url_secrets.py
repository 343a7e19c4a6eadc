"""A password in a database URL is never shown, whatever form the URL gives it.

In the user part, in a query parameter (``?password=``, ``?api_token=`` …), or written with
characters that should have been percent-encoded (``#``, ``?``, ``/``, ``@``): ``redact()``,
the store's ``ConfigurationError`` and every line of the CLI keep it out.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result

from storedsession import ConfigurationError, SessionStore, SessionTable, StoreUnavailable, ids
from storedsession.cli import cli
from storedsession.database import redact

from .support import backend_url

CANARY = "s3cretCANARY"

#: What redact() shows for a URL it cannot show safely.
HIDDEN = "(URL not shown"

#: Hostile URLs (the servers at port 1 refuse connections) and what redact() shows.
URLS = [
    ("postgresql://app:1234/s3cretCANARY@127.0.0.1:1/x", HIDDEN),
    ("postgresql://u:p#s3cretCANARY@127.0.0.1:1/db", HIDDEN),
    ("postgresql://u:p?s3cretCANARY@127.0.0.1:1/db", HIDDEN),
    ("postgresql://u:p/s3cretCANARY@127.0.0.1:1/db", HIDDEN),
    ("postgresql://u:p@s3cretCANARY@127.0.0.1:1/db", HIDDEN),
    ("mysql://root:p#s3cretCANARY@127.0.0.1:1/test", HIDDEN),
    ("postgresql://u@127.0.0.1:1/db?x=1#s3cretCANARY", HIDDEN),
    ("postgresql://u@127.0.0.1:1/db?password=s3cretCANARY#frag", HIDDEN),
    ("postgresql://u:pw@127.0.0.1:1/db;password=s3cretCANARY", HIDDEN),
    ("postgresql://u:s3cretCANARY@127.0.0.1:99999/db", HIDDEN),
    ("postgresql://u:s3cretCANARY@127.0.0.1:port/db", HIDDEN),
    ("postgresql://u:s3cretCANARY@[::1/db", HIDDEN),
    ("postgres:s3cretCANARY", HIDDEN),
    ("s3cretCANARY", HIDDEN),
    ("postgresql://u:s3cretCANARY@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db"),
    ("postgresql://:s3cretCANARY@127.0.0.1:1/db", "postgresql://:***@127.0.0.1:1/db"),
    ("postgresql://u:s3cret%40CANARY@[::1]:1/db", "postgresql://u:***@[::1]:1/db"),
    (
        "mysql://root@127.0.0.1:1/test?password=s3cretCANARY",
        "mysql://root@127.0.0.1:1/test?password=***",
    ),
    (
        "mysql://root@127.0.0.1:1/test?passwd=s3cretCANARY",
        "mysql://root@127.0.0.1:1/test?passwd=***",
    ),
    (
        "postgresql://u@127.0.0.1:1/db?PassWord=s3cretCANARY&pass%77d=s3cretCANARY",
        "postgresql://u@127.0.0.1:1/db?PassWord=***&pass%77d=***",
    ),
    (
        "postgresql://u@127.0.0.1:1/db?connect_timeout=5&api_token=s3cretCANARY&sslmode=prefer",
        "postgresql://u@127.0.0.1:1/db?connect_timeout=5&api_token=***&sslmode=prefer",
    ),
    (
        "postgresql://u@127.0.0.1:1/db?secret_key=s3cretCANARY",
        "postgresql://u@127.0.0.1:1/db?secret_key=***",
    ),
    (
        "postgresql://u@127.0.0.1:1/db?sslkey=/s3cretCANARY",
        "postgresql://u@127.0.0.1:1/db?sslkey=***",
    ),
    (
        "postgresql://u@127.0.0.1:1/db?sslpassword=s3cretCANARY",
        "postgresql://u@127.0.0.1:1/db?sslpassword=***",
    ),
    ("postgresql://u@127.0.0.1:1/db?password", "postgresql://u@127.0.0.1:1/db?password=***"),
    ("sqlite:///var/lib/app/sessions.db", "sqlite:///var/lib/app/sessions.db"),
    ("sqlite:////abs/sessions.db", "sqlite:////abs/sessions.db"),
]


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_redact(url: str, shown: str) -> None:
    result = redact(url)
    assert CANARY not in result and "CANARY" not in result
    if shown == HIDDEN:
        assert result.startswith(HIDDEN)
    else:
        assert result == shown


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_store_errors_never_show_the_password(url: str, shown: str, keys) -> None:
    if url.startswith("sqlite"):
        return
    try:
        store = SessionStore(url, keys=keys)
    except ConfigurationError as exc:
        assert CANARY not in str(exc) and "CANARY" not in repr(exc.args)
        return
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.load(ids.new_public_id())
        assert "CANARY" not in str(info.value)
    finally:
        store.close()


def test_a_misparsed_password_is_refused_not_sent(keys) -> None:
    # Parsed as written, this is host "app", port 1234 and database "s3cret@db/x": the
    # password would go to another host as a database name.
    for url in (
        "postgresql://app:1234/s3cretCANARY@db/x",
        "mysql://app:1234/s3cretCANARY@db/x",
        "postgresql://u@db/x?options=s3cretCANARY@x",
    ):
        with pytest.raises(ConfigurationError) as info:
            SessionStore(url, keys=keys)
        assert "CANARY" not in str(info.value)
        assert "percent-encode" in str(info.value)


def invoke(*args: str) -> Result:
    env = {"STOREDSESSION_KEYS": None, "STOREDSESSION_DATABASE_URL": None}
    return CliRunner().invoke(cli, list(args), env=env)


CLI_URLS = [url for url, _ in URLS if not url.startswith("sqlite")]


@pytest.mark.parametrize("url", CLI_URLS)
@pytest.mark.parametrize("command", [["init"], ["init", "--upgrade"], ["expire"], ["stats"]])
def test_cli_never_shows_the_password(command: list[str], url: str) -> None:
    result = invoke(*command, "--database", url)
    assert result.exit_code in (2, 3), result.output
    assert isinstance(result.exception, SystemExit)
    assert "CANARY" not in result.output
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1


def test_stats_shows_the_url_without_its_query_secrets(tmp_path, table_name) -> None:
    url = backend_url("postgres", tmp_path) + "?password=s3cretCANARY&sslpassword=s3cretCANARY"
    table = table_name
    try:
        assert invoke("init", "--database", url, "--table", table).exit_code == 0
        result = invoke("stats", "--database", url, "--table", table)
        assert result.exit_code == 0, result.output
        assert "CANARY" not in result.output
        assert "?password=***&sslpassword=***" in result.stdout
    finally:
        session_table = SessionTable(url, table)
        session_table.drop_table()
        session_table.close()
