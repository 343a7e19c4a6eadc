"""Two small demo apps, Bottle and Falcon, that show storedsession in a browser.

Run one from the repository root: ``python -m examples.bottle_demo`` or
``python -m examples.falcon_demo`` (``--help`` for the options).
"""
