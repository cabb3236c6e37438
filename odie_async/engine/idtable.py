"""A compact set of record ids, with a few flag bits each: one 64-bit word a slot.

A run over millions of records must remember, per ``custom_id``, whether it
was read from the input (to refuse a duplicate) and whether it has a line in
the output or errors file (to skip it and to refuse a second result). Python
sets and dicts spend 80-200 bytes an entry on that; this table spends about 10
(8 bytes a slot at a load of at most 0.85), so a run's memory stays nearly flat
with its length.

An id is its ``hash()`` with the low four bits cleared: those bits of each
slot hold the flags, so ids compare on 60 bits. Equal ids always meet; two
different ids collide with a chance of about one in 100,000 among 5,000,000
ids, which the input reader checks (it looks the earlier line up in the file).
The slots are open-addressed with linear probing; ``values`` (a second array,
made only when one is set) keep a 64-bit number per id, the request digest's
hash of a record done before.
"""

from __future__ import annotations

from array import array

FLAG_BITS = 0xF
DONE, FAILED, READ = 1, 2, 4  # has a line in the output or errors file; that line is an error; read in this pass
_ID = ~FLAG_BITS
MAX_LOAD = 0.85


def id_of(custom_id: str) -> int:
    """The table key of ``custom_id``: its hash with the flag bits cleared (never 0)."""
    return (hash(custom_id) & _ID) or 16


class IdTable:
    """Ids (``id_of``) with flag bits and an optional value each; ``reserve`` before a known number of adds."""

    __slots__ = ("_slots", "_values", "_cap", "_count", "_limit")

    def __init__(self, expected: int = 0) -> None:
        self._values: array | None = None
        self._count = 0
        self._allocate(expected)

    def _allocate(self, expected: int) -> None:
        self._cap = int(max(expected, 8) / MAX_LOAD) | 1  # odd: the ids' low bits are all zero
        self._limit = max(expected, int(self._cap * MAX_LOAD))  # below the capacity: a probe always ends
        self._slots = array("q", [0]) * self._cap
        if self._values is not None:
            self._values = array("q", [0]) * self._cap

    def __len__(self) -> int:
        return self._count

    def _index(self, key: int) -> int:
        """The slot holding ``key``, or the empty slot where it would go."""
        slots, cap = self._slots, self._cap
        i = key % cap
        while True:
            word = slots[i]
            if not word or word & _ID == key:
                return i
            i += 1
            if i == cap:
                i = 0

    def flags(self, key: int) -> int:
        """The flags of ``key``; 0 when it is absent (an id added with no flags is present all the same)."""
        slots, cap = self._slots, self._cap  # the probe is written out: this runs a few times per record
        i = key % cap
        word = slots[i]
        while word and word & _ID != key:
            i = i + 1 if i + 1 < cap else 0
            word = slots[i]
        return word & FLAG_BITS

    def __contains__(self, key: int) -> bool:
        return bool(self._slots[self._index(key)])

    def update(self, key: int, add: int, remove: int = 0) -> int:
        """Set the flags ``add`` and clear ``remove`` on ``key`` (adding it); return its flags before."""
        slots, cap = self._slots, self._cap
        i = key % cap
        word = slots[i]
        while word and word & _ID != key:
            i = i + 1 if i + 1 < cap else 0
            word = slots[i]
        if word:
            slots[i] = (word & ~remove) | add
            return word & FLAG_BITS
        if self._count >= self._limit:
            self._grow()
            i = self._index(key)
        self._count += 1
        self._slots[i] = key | add
        return 0

    def value(self, key: int) -> int:
        """The value set for ``key``; 0 when none was."""
        if self._values is None:
            return 0
        i = self._index(key)
        return self._values[i] if self._slots[i] else 0

    def set_value(self, key: int, value: int) -> None:
        """Keep ``value`` (a signed 64-bit number) for ``key``, which must be present."""
        if self._values is None:
            if not value:
                return
            self._values = array("q", [0]) * self._cap
        self._values[self._index(key)] = value

    def reserve(self, more: int) -> None:
        """Make room for ``more`` new ids at once, so that adding them never grows the table twice."""
        if self._count + more > self._limit:
            self._rehash(self._count + more)

    def _grow(self) -> None:
        self._rehash(2 * self._count)

    def _rehash(self, expected: int) -> None:
        old_slots, old_values = self._slots, self._values
        self._allocate(expected)
        for i, word in enumerate(old_slots):
            if word:
                j = self._index(word & _ID)
                self._slots[j] = word
                if old_values is not None:
                    self._values[j] = old_values[i]
