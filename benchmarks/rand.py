"""Seeded random text and numbers in the shapes the TPC specs ask for (a-strings, n-strings,
money with exact cents), shared by the drivers' population generators."""

from __future__ import annotations

import random
import string

_ALNUM = string.ascii_letters + string.digits


class Rand:
    def __init__(self, seed: int | None = None):
        self.r = random.Random(seed)
        # Random strings are slices of one random pool: the loaders make millions of them.
        self._pool = "".join(self.r.choices(_ALNUM, k=8192))

    def uniform(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)

    def astring(self, lo: int, hi: int) -> str:
        n = self.r.randint(lo, hi)
        start = self.r.randint(0, len(self._pool) - n)
        return self._pool[start:start + n]

    def nstring(self, lo: int, hi: int) -> str:
        return "".join(self.r.choices(string.digits, k=self.r.randint(lo, hi)))

    def money(self, lo: float, hi: float) -> str:
        """A decimal amount as text (exact in both databases)."""
        cents = self.r.randint(round(lo * 100), round(hi * 100))
        return f"{cents // 100}.{cents % 100:02d}"
