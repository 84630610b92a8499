"""Currencies and their minor units, from CLDR through Babel.

Amounts travel in minor units (``amount_minor``), as Stripe sends them: 1000 is
EUR 10.00, JPY 1000 (zero-decimal) and KWD 1.000 (three decimals).
"""

from __future__ import annotations

from functools import lru_cache

from babel.numbers import get_currency_precision, list_currencies

# ISO 4217 codes that are not money a card payment is made in: precious metals,
# IMF, bond-market and other accounting units, the testing code and "no
# currency".
NOT_PAYMENT_CURRENCIES = frozenset({
    "XAG", "XAU", "XPD", "XPT", "XDR", "XSU", "XUA",
    "XBA", "XBB", "XBC", "XBD", "XTS", "XXX", "XAD", "XEU", "XFO", "XFU", "XRE",
})


@lru_cache(maxsize=1)
def known_currencies() -> frozenset[str]:
    """ISO 4217 codes of money, upper case (no metals, units or test codes)."""
    codes = frozenset(code.upper() for code in list_currencies())
    return codes - NOT_PAYMENT_CURRENCIES


def is_known_currency(code: str) -> bool:
    return code.upper() in known_currencies()


@lru_cache(maxsize=512)
def minor_unit_exponent(code: str) -> int:
    """Digits after the decimal point: 2 for EUR, 0 for JPY, 3 for KWD."""
    return get_currency_precision(code.upper())


def to_major(amount_minor: int, code: str) -> float:
    """Minor units to major units: ``to_major(1050, "eur") == 10.5``."""
    return amount_minor / 10 ** minor_unit_exponent(code)


def to_minor(amount_major: float, code: str) -> int:
    """Major units to minor units, rounded half away from zero."""
    scaled = amount_major * 10 ** minor_unit_exponent(code)
    return int(scaled + 0.5) if scaled >= 0 else -int(-scaled + 0.5)
