"""A Bottle app written the way the README shows, served by the pre-fork tests' gunicorn.

It creates its table at start-up, so under ``gunicorn --preload`` the master uses the
store's connections before it forks its workers.
"""

import logging
import os
from typing import Any

import bottle

from storedsession.plugins.bottle import StoredSessionPlugin

logging.basicConfig(level=logging.WARNING)  # a decryption failure would show on stderr

plugin = StoredSessionPlugin(os.environ["PREFORK_URL"], table_name=os.environ["PREFORK_TABLE"])
plugin.store.create_table()
app = bottle.Bottle()
app.install(plugin)


@app.route("/count")
def count(session: Any) -> dict[str, int]:
    session["n"] = session.get("n", 0) + 1
    return {"n": session["n"], "worker": os.getpid()}
