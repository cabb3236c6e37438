"""A spending cap: a run never admits a request whose worst case could take its spend past the cap.

Spend is counted from each answer's ``usage`` at the prices of ``configs/prices.yaml`` (``--prices
FILE`` in the same shape, or ``--price IN,OUT`` in USD per million input and output tokens for every
model). Before a request is sent, its worst case (its estimated prompt and its whole output budget,
at the dearer of the two prices) is reserved; the answer settles the reservation at its real usage.
A request whose worst case no longer fits is not sent: intake stops, what is in flight finishes (its
worst case was reserved, so it fits), and the run ends with ``EXIT_SPEND_CAP``. A rerun with a higher
cap resumes. A request that fits only once the requests in flight have settled waits for them, so a
run stops within one request's worst case of the cap. A model with no known price refuses a cap:
spend is never counted as zero. A run without a cap still counts its spend (``SpendCap.meter``),
shown while every answer's model has a price.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import ConfigError, SpendCapReached
from ..files import load_yaml
from .estimate import load_prices, price_for
from .routes import usage_tokens


HELD, WAIT, REACHED = "held", "wait", "reached"  # ``SpendCap.reserve``'s answers


@dataclass(frozen=True)
class Prices:
    """USD per million ``(input, output)`` tokens for a model, at online or batch rates."""

    table: dict
    mode: str = "online"
    fixed: tuple[float, float] | None = None

    @classmethod
    def load(cls, prices_file: str | Path | None = None, price: tuple[float, float] | None = None,
             mode: str = "online") -> "Prices":
        """The packaged table, ``prices_file`` instead of it, or one ``price`` for every model."""
        table = load_yaml(Path(prices_file), "price table") if prices_file else load_prices()
        if not isinstance(table, dict) or not isinstance(table.get("models", {}), dict):
            raise ConfigError(f"{prices_file}: a price table has a 'models:' mapping (see configs/prices.yaml)")
        if price is not None and (len(price) != 2 or not all(math.isfinite(p) and p >= 0 for p in price)):
            raise ConfigError(f"price {list(price)}: expected [IN, OUT], USD per million tokens")
        return cls(table.get("models", {}), mode, tuple(price) if price is not None else None)

    def rates(self, model: str | None) -> tuple[float, float] | None:
        """``(input, output)`` USD per million tokens for ``model``, or None when it has no price."""
        if self.fixed is not None:
            return self.fixed
        entry = price_for(self.table, str(model or ""))
        rates = entry.get(self.mode) if isinstance(entry, dict) else None
        return (float(rates[0]), float(rates[1])) if rates else None


def parse_price(text: str) -> tuple[float, float]:
    """``IN,OUT`` in USD per million tokens, both finite and not negative."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"--price {text!r}: expected IN,OUT in USD per million tokens, e.g. 0.15,0.60")
    return values  # type: ignore[return-value]


@dataclass
class Charge:
    """What one admitted request reserved, and the rates its answer is settled at."""

    worst: float
    rate_in: float
    rate_out: float


class SpendCap:
    """Spend so far, reservations in flight, and the cap they may not pass together."""

    def __init__(self, cap_usd: float, prices: Prices) -> None:
        if not (math.isfinite(cap_usd) and cap_usd > 0):
            raise ConfigError(f"--max-cost must be a positive number of USD, not {cap_usd}")
        self.cap, self.prices = cap_usd, prices
        self.spent = self.reserved = 0.0
        self.holding = 0  # reservations in flight: ``reserved`` is a float sum and may not return to 0 exactly
        self.capped = False
        self.unpriced: set[str] = set()  # a meter's models without a price: its spend is unknown
        self.counted = 0  # a meter's answers counted at a known price

    @classmethod
    def meter(cls, prices: Prices) -> "SpendCap":
        """No cap, only the count: what a run without ``--max-cost`` spent, reported while every
        answer's model has a price (``count``)."""
        meter = cls(1.0, prices)
        meter.cap = None
        return meter

    def count(self, model: str | None, usage) -> None:
        """A meter's count of one answer of ``model``; a model without a price makes the spend unknown."""
        rates = self.prices.rates(model)
        if rates is None:
            self.unpriced.add(str(model))
        else:
            self.bill(Charge(0.0, *rates), usage)
            self.counted += 1

    @classmethod
    def from_settings(cls, settings, mode: str = "online") -> "SpendCap | None":
        """The cap of ``settings`` (``max_cost``, ``prices_file``, ``price``) at ``mode`` prices; None without one."""
        if not settings.max_cost:
            return None
        return cls(settings.max_cost, Prices.load(settings.prices_file, settings.price, mode))

    def require_prices(self, models) -> None:
        """Refuse the cap when a model the run will ask has no known price."""
        missing = sorted(str(m) for m in models if self.prices.rates(m) is None)
        if missing:
            raise ConfigError(f"--max-cost needs a price for {', '.join(missing)}: none is in the price table; "
                              "give one with --price IN,OUT (USD per million tokens) or --prices FILE")

    def charge(self, model: str | None, tokens: float) -> Charge:
        """The worst case of a request of ``tokens`` (prompt estimate plus output budget) to ``model``."""
        rates = self.prices.rates(model)
        if rates is None:
            self.require_prices([model])
        rate_in, rate_out = rates
        return Charge(tokens * max(rate_in, rate_out) / 1e6, rate_in, rate_out)

    def reserve(self, charge: Charge) -> str:
        """The one decision every capped sender makes before a request or batch leaves: ``HELD`` when
        ``charge`` fits beside what is spent and in flight (and it is now reserved); ``WAIT`` when it may
        fit once a reservation in flight settles; ``REACHED`` when nothing in flight is left to settle, so
        it never will: the cap is then marked reached for good."""
        if self.capped:
            return REACHED
        if self.spent + self.reserved + charge.worst <= self.cap:
            self.hold(charge)
            return HELD
        if self.holding:
            return WAIT
        self.capped = True
        return REACHED

    def reached(self, what: str, left: str = "", then: str = "rerun with a higher cap to go on") -> SpendCapReached | None:
        """Why ``what`` (the run, the bench) stopped early, when the cap stopped it; None otherwise."""
        if not self.capped:
            return None
        return SpendCapReached(f"the spending cap of ${self.cap:g} stopped the {what} with ${self.spent:.4f} "
                               f"spent{left}; {then}")

    def hold(self, charge: Charge) -> None:
        """Reserve ``charge`` whether or not it fits: what was sent before this run (a provider's batch
        still running) will be billed anyway."""
        self.reserved += charge.worst
        self.holding += 1

    def release(self, charge: Charge) -> None:
        """Give back the reservation of ``charge`` (its answers are counted with ``bill``)."""
        self.holding = max(0, self.holding - 1)
        # 0.1 + 0.2 - 0.1 - 0.2 is not 0: with nothing held, nothing is reserved, exactly.
        self.reserved = max(0.0, self.reserved - charge.worst) if self.holding else 0.0

    def bill(self, charge: Charge, usage) -> float:
        """Count what one answer cost at ``charge``'s rates (0 for an answer without usage)."""
        prompt, completion = usage_tokens(usage)
        cost = (prompt * charge.rate_in + completion * charge.rate_out) / 1e6
        self.spent += cost
        return cost

    def settle(self, charge: Charge, usage) -> float:
        """Release the reservation and count what the answer cost (0 for an answer without usage)."""
        self.release(charge)
        return self.bill(charge, usage)

    def report(self, done: int, total: int | None) -> dict | None:
        """Spend so far, the cap (None for a meter), and the total projected from the records done (None
        before any); None for a meter that met a model without a price."""
        if self.cap is None and (self.unpriced or not self.counted):
            return None
        projected = self.spent * total / done if done and total else None
        return {"cap_usd": self.cap, "spent_usd": round(self.spent, 6), "capped": self.capped,
                "projected_total_usd": None if projected is None else round(projected, 4),
                "prices": "one price for every model" if self.prices.fixed else f"{self.prices.mode} price table"}
