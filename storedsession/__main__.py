"""``python -m storedsession``: the ``storedsession`` command."""

from .cli import main

if __name__ == "__main__":
    main()
