"""The two loggers: one for operations, one for what hostile input did.

``storedsession`` carries operational events (a sign-in recorded without an address, an
expired session ignored); ``storedsession.security`` only what a hostile or damaged cookie
or row did (a malformed or unknown id, a row that does not decrypt or was edited, a blocked
resurrection), so that it can be sent to whoever watches for attacks. A database failure is
raised, never logged as well: the application that catches it decides what to log.
"""

from __future__ import annotations

import logging

log = logging.getLogger("storedsession")
security_log = logging.getLogger("storedsession.security")
# A library's loggers print nothing until the application configures logging (without a
# handler, logging's last-resort one would write warnings to stderr, the CLI's included).
log.addHandler(logging.NullHandler())
