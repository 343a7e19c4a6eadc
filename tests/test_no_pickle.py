"""storedsession never uses pickle or marshal: payloads are JSON, always."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

LIFECYCLE = textwrap.dedent(
    """
    import sys
    sys.modules["pickle"] = None
    sys.modules["marshal"] = None
    import storedsession, storedsession.web, storedsession.signals
    from storedsession import SessionStore, generate_key
    store = SessionStore(sys.argv[1], keys=[generate_key()])
    store.create_table()
    session = store.load(None)
    session["cart"] = [1, 2]
    store.save(session)
    loaded = store.load(session.id)
    loaded["cart"].append(3)
    loaded.regenerate()
    store.save(loaded)
    assert store.load(loaded.id)["cart"] == [1, 2, 3]
    store.delete(loaded)
    store.expire()
    for name in ("pickle", "marshal"):
        assert sys.modules[name] is None, name
    print("lifecycle ok")
    """
)


def test_core_runs_a_lifecycle_with_pickle_and_marshal_poisoned(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LIFECYCLE, f"sqlite:///{tmp_path}/s.db"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "lifecycle ok" in result.stdout


def test_the_lint_rule_bans_pickle_and_marshal() -> None:
    config = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"pickle".msg' in config and '"marshal".msg' in config
    sources = (Path(__file__).parents[1] / "storedsession").rglob("*.py")
    for source in [*sources, *(Path(__file__).parents[1] / "plugins").rglob("*.py")]:
        text = source.read_text()
        assert "import pickle" not in text and "import marshal" not in text, source
