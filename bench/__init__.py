"""storedsession's benchmark: the library against a hand-written floor, side by side."""
