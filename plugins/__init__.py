"""Framework adapters, installed as ``storedsession.plugins``."""
