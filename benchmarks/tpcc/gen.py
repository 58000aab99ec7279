"""TPC-C's random data (spec clause 4.3 and 2.1.6), pure: the loader and the terminals draw
from here, so the tests can check the rules without a database."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks import rand

SYLLABLES = ("BAR", "OUGHT", "ABLE", "PRI", "PRES", "ESE", "ANTI", "CALLY", "ATION", "EING")


@dataclass(frozen=True)
class Scale:
    """The database's size. The spec fixes everything but `warehouses`; the smaller
    `items`/`customers`/`orders` exist so tests can load a warehouse in a second — every rule
    (10% ORIGINAL, the last 30% of orders undelivered, NURand ranges) scales with them."""
    warehouses: int = 1
    items: int = 100_000
    districts: int = 10
    customers: int = 3000   # per district
    orders: int = 3000      # per district, = customers (one order per customer)

    @property
    def first_new_order(self) -> int:
        """Orders from here on are undelivered at load (2101 of 3000 in the spec)."""
        return self.orders - self.orders * 3 // 10 + 1

    @property
    def last_names(self) -> int:
        return min(1000, self.customers)

    def rows(self) -> int:
        per_district = self.customers * 2 + self.orders * 11 + (self.orders * 3 // 10)
        return self.items + self.warehouses * (1 + self.items + self.districts
                                               * (1 + per_district))


def last_name(num: int) -> str:
    return SYLLABLES[num // 100] + SYLLABLES[(num // 10) % 10] + SYLLABLES[num % 10]


class Rand(rand.Rand):
    """With the spec's NURand; `c_*` are its run constants (2.1.6)."""

    def __init__(self, seed: int | None = None):
        super().__init__(seed)
        self.c_last, self.c_id, self.c_item = (self.r.randint(0, 255), self.r.randint(0, 1023),
                                               self.r.randint(0, 8191))

    def nurand(self, a: int, lo: int, hi: int) -> int:
        c = {255: self.c_last, 1023: self.c_id, 8191: self.c_item}[a]
        return (((self.r.randint(0, a) | self.r.randint(lo, hi)) + c) % (hi - lo + 1)) + lo

    def zip(self) -> str:
        return self.nstring(4, 4) + "11111"

    def data(self) -> str:
        """i_data / s_data: 26..50 characters, 10% containing ORIGINAL."""
        s = self.astring(26, 50)
        if self.r.random() < 0.1:
            at = self.r.randint(0, len(s) - 8)
            s = s[:at] + "ORIGINAL" + s[at + 8:]
        return s

    def customer_last(self, scale: Scale) -> str:
        return last_name(self.nurand(255, 0, scale.last_names - 1))

    def customer_id(self, scale: Scale) -> int:
        return self.nurand(1023, 1, scale.customers)

    def item_id(self, scale: Scale) -> int:
        return self.nurand(8191, 1, scale.items)
