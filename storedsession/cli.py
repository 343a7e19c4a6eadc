"""The command line: ``storedsession`` (a click group) and ``storedsession-expire``.

Every failure is one line on stderr (``Error: ...``), never a traceback and never the
password of a database URL, and ends with an exit code that says what went wrong:

==== ==========================================================================
code meaning
==== ==========================================================================
0    done
1    any other failure: interrupted (Ctrl-C), a migration file there already or unwritable,
     an upgrade the server cannot make online (``init --upgrade``)
2    usage: a bad option, no database given, an unusable database URL or table name,
     a server setting that cannot work (MySQL ``max_allowed_packet``)
3    the database failed or cannot be reached
4    the session table does not exist (run ``storedsession init``)
5    no usable key: none given, malformed, listed twice, or an unreadable keys file
==== ==========================================================================
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import __version__
from .database import describe, redact
from .exceptions import ConfigurationError, StoreUnavailable, TableMissing
from .expiry import FULL_LOAD, MAX_BATCH
from .keys import KEYS_ENV, environment_keys, generate_key, parse_keys
from .maintenance import Rotation, rotate_keys, stats
from .models import DEFAULT_TABLE
from .schema import (
    UpgradeNeedsCopy,
    migration_source,
    upgrade_migration_source,
    upgrade_user_id,
    user_id_column,
)
from .store import SessionStore
from .table import SessionTable

#: The environment variable ``--database`` falls back to.
DATABASE_ENV = "STOREDSESSION_DATABASE_URL"


class BadUsage(click.ClickException):
    """The command line or the settings cannot work."""

    exit_code = 2


class DatabaseDown(click.ClickException):
    """The database failed or cannot be reached."""

    exit_code = 3


class NoTable(click.ClickException):
    """The session table does not exist."""

    exit_code = 4


class KeyProblem(click.ClickException):
    """No usable encryption key."""

    exit_code = 5


@dataclass
class Target:
    """Where the sessions are, as ``--database`` and ``--table`` say."""

    database: str | None = None
    table: str = DEFAULT_TABLE

    def session_table(self) -> SessionTable:
        """Open the table, for a command that needs no keys; it closes when the command ends."""
        table = SessionTable(self._url(), self.table)
        click.get_current_context().call_on_close(table.close)
        return table

    def store(self, keys: Sequence[str]) -> SessionStore:
        """Build the store with ``keys``; it closes when the command ends."""
        store = SessionStore(self._url(), keys=list(keys), table_name=self.table)
        click.get_current_context().call_on_close(store.close)
        return store

    def _url(self) -> str:
        if not self.database:
            raise BadUsage(f"No database given: pass --database URL or set {DATABASE_ENV}.")
        return self.database

    def where(self) -> str:
        """Name the database for a message, without its password."""
        return redact(self.database) if self.database else "the session database"


pass_target = click.make_pass_decorator(Target, ensure=True)


class _Command(click.Command):
    """A command whose storedsession errors become one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TableMissing as exc:
            target = ctx.ensure_object(Target)
            raise NoTable(
                f"The session table {exc.table_name!r} does not exist in {target.where()}. "
                "Create it with `storedsession init` (or a migration from "
                "`storedsession install-migration`)."
            ) from None
        except StoreUnavailable as exc:
            target = ctx.ensure_object(Target)
            raise DatabaseDown(
                f"The session database {target.where()} failed or cannot be reached: "
                f"{describe(exc.__cause__ or exc)}"
            ) from None
        except ConfigurationError as exc:
            raise BadUsage(str(exc)) from None


class _Group(click.Group):
    command_class = _Command


def _set_target(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(ctx.ensure_object(Target), field, value)

    return callback


def database_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--database`` and ``--table``, which fill in the command's :class:`Target`."""
    command = click.option(
        "--table",
        metavar="NAME",
        default=DEFAULT_TABLE,
        show_default=True,
        expose_value=False,
        callback=_set_target("table"),
        help="The session table.",
    )(command)
    return click.option(
        "--database",
        metavar="URL",
        envvar=DATABASE_ENV,
        show_envvar=True,
        expose_value=False,
        callback=_set_target("database"),
        help="Database URL, e.g. postgresql://user@host/dbname or sqlite:///sessions.db.",
    )(command)


@contextmanager
def _progress(label: str, length: Callable[[], int]) -> Iterator[Callable[[int], None] | None]:
    """Yield what to tell of progress: a bar on a terminal, nothing elsewhere (cron)."""
    if not sys.stdout.isatty():
        yield None
        return
    with click.progressbar(length=length(), label=label) as bar:
        yield bar.update


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="storedsession")
def cli() -> None:
    """Set up, sweep and re-key a storedsession table."""


@cli.command()
@database_options
@click.option(
    "--upgrade",
    is_flag=True,
    help="Also make the change a table of an earlier version needs, online.",
)
@pass_target
def init(target: Target, upgrade: bool) -> None:
    """Create the session table and its indexes (idempotent). Needs no keys.

    On MySQL/MariaDB, a table made by an earlier version compares user ids loosely
    (case, accents and trailing spaces ignored): init reports it and prints the
    statement that fixes it; with --upgrade it runs that statement online, or refuses,
    saying why, where the server would copy the table.
    """
    table = target.session_table()
    with table.connected():
        existed = table.database.table_exists(table.table_name)
        table.create_table()
        column = user_id_column(table) if existed else None
    if not existed:
        click.echo(f"Created the session table {table.table_name!r}.")
        return
    lines = [f"The session table {table.table_name!r} exists already."]
    if column is None or column.exact:
        if upgrade:
            lines.append("Its user_id column compares user ids exactly: nothing to upgrade.")
    elif upgrade:
        try:
            upgrade_user_id(table, column)
        except UpgradeNeedsCopy as exc:
            raise click.ClickException(str(exc)) from None
        lines.append(
            f"Upgraded the user_id column to {column.wanted}, online: user ids now compare exactly."
        )
    else:
        cannot_store = "" if column.charset == "utf8mb4" else ", cannot store most ids"
        lines += [
            f"Its user_id column ({column.charset}, {column.collation}; an earlier "
            f"version's) compares user ids loosely{cannot_store}: ids that differ in case, "
            "accents or trailing spaces match each other in the database (the store "
            "compares them exactly in Python too). Upgrade it online with `storedsession "
            "init --upgrade`, or with this statement (on Galera, see the README):",
            column.statement() + ";",
        ]
    click.echo("\n".join(lines))


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # click's FloatRange lets "nan" through (every comparison with it is false), and an
    # infinite value is no limit at all.
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number.")
    return value


@click.command(cls=_Command)
@database_options
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=MAX_BATCH,
    show_default=True,
    help="At most this many sessions per statement (batches are sized to about 10 ms).",
)
@click.option("--dry-run", is_flag=True, help="Count the expired sessions; delete none.")
@click.option(
    "--max-load",
    metavar="F",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=FULL_LOAD,
    show_default=True,
    callback=_finite,
    help=(
        "The share of wall time spent deleting, in (0, 1]: 0.5 rests as long as it works. "
        "Below 1, batches are shorter (about 2 ms) and the sweep runs at a lower CPU priority."
    ),
)
@click.option(
    "--max-seconds",
    metavar="N",
    type=click.FloatRange(min=0, min_open=True),
    callback=_finite,
    help="Stop after about N seconds, leaving the rest for the next run.",
)
@pass_target
def expire(
    target: Target, batch_size: int, dry_run: bool, max_load: float, max_seconds: float | None
) -> None:
    """Delete expired sessions in batches and say how many. Needs no keys.

    Safe beside live traffic: sessions are chosen by their stored expiry against the
    moment the sweep began, so a session used meanwhile stays. Batches follow one another
    at once unless --max-load asks for rest between them.
    """
    table = target.session_table()
    if dry_run:
        click.echo(f"Would expire {table.count_expired()} sessions.")
        return
    if max_load < 1:
        os.nice(10)  # sharing the machine too: the application's processes come first
    with _progress("Expiring sessions", table.count_expired) as progress:
        result = table.sweep(
            batch_size, max_load=max_load, max_seconds=max_seconds, progress=progress
        )
    if not result.finished:
        click.echo(f"Expired {result.removed} sessions.")
        click.echo(
            f"Stopped at --max-seconds {max_seconds:g} after removing {result.removed} "
            "sessions; the rest are left for the next run."
        )
    elif result.removed:
        click.echo(f"Expired {result.removed} sessions.")
    else:
        click.echo("No sessions to expire.")


cli.add_command(expire)


@cli.command("generate-key")
def generate_key_command() -> None:
    """Print a fresh key: 32 random bytes as URL-safe base64."""
    click.echo(generate_key())


def _read_keys(keys_file: Path | None) -> list[str]:
    if keys_file is None:
        source = KEYS_ENV
        texts = environment_keys()
    else:
        source = f"the keys file {keys_file}"
        try:
            lines = keys_file.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise KeyProblem(f"Cannot read the keys file {keys_file}: {reason}.") from None
        texts = [line.strip() for line in lines if not line.lstrip().startswith("#")]
    texts = [text for text in texts if text]
    if not texts:
        raise KeyProblem(
            f"No session encryption key in {source}: set {KEYS_ENV} (keys separated by "
            "commas, newest first) or pass --keys-file (one key a line, newest first). "
            "Make a key with `storedsession generate-key`."
        )
    try:
        parse_keys(texts)
    except ConfigurationError as exc:
        raise KeyProblem(f"In {source}: {exc}") from None
    return texts


def _was(count: int) -> str:
    return "was" if count == 1 else "were"


def _summary(report: Rotation, key_id: str) -> str:
    rotated, current, unreadable = report.rotated, report.current, report.unreadable
    line = (
        f"Re-encrypted {rotated} session{'' if rotated == 1 else 's'} under the first key "
        f"(id {key_id}); {current} {_was(current)} under it already; {unreadable} could not "
        f"be read with any key and {_was(unreadable)} left untouched."
    )
    if report.malformed:
        line += (
            f" {report.malformed} had a stored id that is not ASCII and "
            f"{_was(report.malformed)} skipped."
        )
    if report.changed:
        line += f" {report.changed} kept changing under live traffic: run it again to finish them."
    return line


@cli.command("rotate-keys")
@database_options
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Sessions read per query.",
)
@click.option(
    "--keys-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"A file of keys, one a line, newest first (instead of {KEYS_ENV}).",
)
@pass_target
def rotate_keys_command(target: Target, batch_size: int, keys_file: Path | None) -> None:
    """Re-encrypt every stored session under the first key, in the current format.

    Keys come from --keys-file or STOREDSESSION_KEYS, never from the command line.
    Sessions no key can read, and rows whose stored id is not ASCII, are counted and left
    untouched; a session saved by live traffic meanwhile keeps that save. Rows in envelope
    format 1 are rewritten even under the first key. Interrupted, it goes on where it
    stopped when run again. Afterwards, the keys after the first can be removed.
    """
    texts = _read_keys(keys_file)
    store = target.store(texts)
    model = store.model

    def count() -> int:
        with store.connected():
            return int(model.select().count())

    with _progress("Re-encrypting sessions", count) as progress:
        report = rotate_keys(store, batch_size, progress=progress)
    click.echo(_summary(report, parse_keys(texts)[0].key_id.hex()))


def _size(size: int | None, size_of: str) -> str:
    if size is None:
        return "unknown"
    value, unit = float(size), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    shown = f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
    return f"{shown} ({size_of})"


@cli.command("stats")
@database_options
@pass_target
def stats_command(target: Target) -> None:
    """Show session counts, ages, the table size and the envelopes. Needs no keys.

    Live, expired and total sessions, live ones with a user id, the creation times of
    the oldest and newest live sessions (live and expired as the stored expiry times
    say), the size of the table where the database can tell, and how many stored rows
    are in each envelope format under each key id (format 1: run rotate-keys).
    """
    table = target.session_table()
    figures = stats(table)

    def when(moment: Any) -> str:
        return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")

    rows = [
        ("Table", f"{table.table_name} in {target.where()}"),
        ("Live", figures.live),
        ("Expired", figures.expired),
        ("Total", figures.total),
        ("Live with a user id", figures.with_user),
        ("Oldest live, created", when(figures.oldest)),
        ("Newest live, created", when(figures.newest)),
        ("Size", _size(figures.size, figures.size_of)),
    ]
    for envelopes in figures.envelopes:
        if envelopes.format is None:
            rows.append(("Not an envelope", envelopes.rows))
        else:
            rows.append((f"Format {envelopes.format}, key {envelopes.key_id}", envelopes.rows))
    for label, value in rows:
        click.echo(f"{label + ':':<24}{value}")


@cli.command("install-migration")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("migrations"),
    show_default=True,
    help="The migrations directory.",
)
@click.option(
    "--table", metavar="NAME", default=DEFAULT_TABLE, show_default=True, help="The session table."
)
def install_migration(directory: Path, table: str) -> None:
    """Write the migrations that create the session table and keep it current.

    Files for peewee's migration runner (playhouse.migrations), for projects that keep
    their schema with migrations instead of `storedsession init`: one that creates the
    table, and one that makes its user_id column compare exactly (MySQL/MariaDB). Where
    the first is there already (written by an earlier version), only the second is
    written. Apply them with `pwmigrate DATABASE up` or `playhouse.migrations.run(db)`.
    """
    # Only this command needs the runner's module.
    from playhouse.migrations import Migration

    sources = {
        "create": migration_source(table, __version__),
        "exact_user_id": upgrade_migration_source(table, __version__),
    }
    found = Migration.load_directory(str(directory))
    there = {
        kind: [m.path for m in found if m.name.endswith(f"_{kind}_{table}")] for kind in sources
    }
    if there["exact_user_id"]:
        paths = " and ".join(paths[0] for paths in there.values() if paths)
        raise click.ClickException(f"The migrations of {table!r} are there already: {paths}.")
    number = max((m.idx for m in found), default=0) + 1
    for kind, source in sources.items():
        if there[kind]:
            continue
        path = directory / f"{number:04d}_{kind}_{table}.py"
        number += 1
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with path.open("x", encoding="utf-8") as file:
                file.write(source)
        except OSError as exc:
            raise click.ClickException(f"Cannot write {path}: {exc.strerror}.") from None
        click.echo(f"Wrote {path}.")


def main() -> None:
    """Run ``storedsession``."""
    cli()


def expire_main() -> None:
    """Run ``storedsession-expire``."""
    expire()
