"""Amounts of the grid's credit token: one exact type, :class:`Credits`.

The token has 6 decimals: one credit is 1,000,000 base units. A :class:`Credits` value is exact
(never a float). It is built from a number of credits given as text, a :class:`~decimal.Decimal` or
a whole number, or from a number of base units named so::

    Credits("2.5")            # two and a half credits
    Credits(Decimal("0.01"))  # one hundredth of a credit
    Credits(3)                # three credits
    Credits(units=1)          # one base unit (a millionth of a credit)

A :class:`Credits` is an ``int`` subclass whose integer value is its count of base units, so it
goes unchanged into contract calls and arithmetic with other amounts; its :attr:`~Credits.amount`
is the exact :class:`~decimal.Decimal` number of credits and ``str()`` prints it (``"2.5"``).
Sums and differences of amounts are amounts; multiplying by a whole number gives an amount.
Floats are refused everywhere with a message saying what to write instead.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn, SupportsIndex

#: Decimals of the credit token on chain.
DECIMALS = 6
#: Base units in one credit.
UNIT = 10**DECIMALS

_FLOAT_HINT = "floats are not exact: write the amount as text (Credits('0.1')) or a Decimal"


def _fail(message: str) -> NoReturn:
    # errors.py loads the compiled ABI: imported on failure only, so ``dsq_chain.types`` stays light
    from dsq_chain.errors import InputError

    raise InputError(message)


class Credits(int):
    """An exact amount of credits (6 decimals); its ``int`` value is the count of base units."""

    __slots__ = ()

    def __new__(cls, value: str | Decimal | int | Credits | None = None, *, units: int | None = None) -> Credits:
        if units is not None:
            if value is not None:
                _fail("Credits(): give an amount of credits or units=, not both")
            if isinstance(units, bool) or not isinstance(units, int):
                _fail(f"Credits(units=...) takes a whole number of base units, got {units!r}")
            return super().__new__(cls, int(units))
        if value is None:
            return super().__new__(cls, 0)
        if isinstance(value, Credits):
            return super().__new__(cls, int(value))
        return super().__new__(cls, _units_of(value, "amount"))

    # -- construction helpers ----------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, what: str = "credits", *, allow_zero: bool = False) -> Credits:
        """A human amount ("10", "2.5") as Credits; ``what`` names the value in error messages.

        Raises :class:`~dsq_chain.errors.InputError` for text that is not a number, a negative
        amount, zero unless ``allow_zero``, or more than 6 decimals."""
        if not isinstance(text, str):
            _fail(f"{what} must be text, got {text!r}")
        amount = Credits(units=_units_of(text, what))
        if amount < 0 or (amount == 0 and not allow_zero):
            _fail(f"{what} must be a positive number of credits, got {text}")
        return amount

    @classmethod
    def of(cls, value: Credits | str | Decimal, what: str = "amount") -> Credits:
        """``value`` as Credits, for parameters that take an amount.

        A plain ``int`` is refused: it is ambiguous (credits or base units?) and ``credits=1``
        would otherwise lock a millionth of a credit. Raises :class:`~dsq_chain.errors.InputError`."""
        if isinstance(value, Credits):
            return value
        if isinstance(value, int):
            _fail(
                f"{what}={value!r}: a plain int is ambiguous; pass Credits({value!r}) for {value} credit(s) "
                f"or Credits(units={value!r}) for {value} base unit(s)"
            )
        return cls(units=_units_of(value, what))

    # -- views ---------------------------------------------------------------------------------
    @property
    def units(self) -> int:
        """The amount in base units (a plain int)."""
        return int(self)

    @property
    def amount(self) -> Decimal:
        """The exact number of credits."""
        return Decimal(str(self))

    def __str__(self) -> str:
        sign = "-" if self < 0 else ""
        whole, frac = divmod(abs(int(self)), UNIT)
        decimals = f"{frac:0{DECIMALS}d}".rstrip("0")
        return f"{sign}{whole}.{decimals}" if decimals else f"{sign}{whole}"

    def __repr__(self) -> str:
        return f"Credits('{self}')"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec) if not spec or spec[-1] not in "dnxXobcfFeEgG%" else format(int(self), spec)

    # -- arithmetic: amounts stay amounts; floats are refused ---------------------------------
    def __add__(self, other: Any) -> Credits:
        return Credits(units=int(self) + _units_operand(other, "+"))

    __radd__ = __add__

    def __sub__(self, other: Any) -> Credits:
        return Credits(units=int(self) - _units_operand(other, "-"))

    def __rsub__(self, other: Any) -> Credits:
        return Credits(units=_units_operand(other, "-") - int(self))

    def __mul__(self, other: Any) -> Credits:
        if isinstance(other, Credits) or not isinstance(other, int) or isinstance(other, bool):
            raise TypeError(f"Credits can be multiplied by a whole number only, not {type(other).__name__}"
                            + (f" ({_FLOAT_HINT})" if isinstance(other, float) else ""))
        return Credits(units=int(self) * other)

    __rmul__ = __mul__

    def __neg__(self) -> Credits:
        return Credits(units=-int(self))

    def __abs__(self) -> Credits:
        return Credits(units=abs(int(self)))

    def __pos__(self) -> Credits:
        return self

    def __round__(self, ndigits: SupportsIndex | None = None) -> int:  # type: ignore[override]
        return int(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_from_units, (int(self),))


def _from_units(units: int) -> Credits:
    return Credits(units=units)


def _units_operand(other: Any, op: str) -> int:
    if isinstance(other, float):
        raise TypeError(f"Credits {op} float: {_FLOAT_HINT}")
    if isinstance(other, bool) or not isinstance(other, int):
        raise TypeError(f"unsupported operand for Credits {op}: {type(other).__name__}")
    return int(other)  # Credits, or an int of base units


def _units_of(value: object, what: str) -> int:
    """Base units of an amount of credits given as text, Decimal or a whole number of credits."""
    if isinstance(value, float):
        _fail(f"{what}={value!r}: {_FLOAT_HINT}")
    if isinstance(value, bool):
        _fail(f"{what} must be an amount of credits, got {value!r}")
    if isinstance(value, int):
        return int(value) * int(UNIT)
    if isinstance(value, str):
        try:
            number = Decimal(value.strip().replace("_", ""))
        except InvalidOperation:
            number = None
        if number is None:
            _fail(f"{what} must be a number of credits, got {value!r}")
    elif isinstance(value, Decimal):
        number = value
    else:
        _fail(f"{what} must be an amount of credits (Credits, text or Decimal), got {type(value).__name__}")
    if not number.is_finite():
        _fail(f"{what} must be a finite number of credits, got {value}")
    units = number.scaleb(DECIMALS)
    if units != units.to_integral_value():
        _fail(f"{what} has more than {DECIMALS} decimals: {value}")
    return int(units)


__all__ = ["DECIMALS", "UNIT", "Credits"]
