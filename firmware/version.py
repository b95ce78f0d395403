"""Firmware version strings: parse the vendor format, keep everything else opaque.

Chargers report their firmware in BootNotification (OCPP) or the CBP/1 login
as a free string. The fleet's vendor format is ``VENDOR_MODEL_YYMMDDNNN``,
e.g. ``DLH_XD32E_210521003``: vendor ``DLH``, model ``XD32E``, built on
2021-05-21, build ``003`` of that day. Task 300 moved pile
``81000000560000100003`` from ``DLH_XD32E_201110002`` to
``DLH_XD32E_210521003``; the latter is newer.

Tolerated variants, each because it was seen or is a pure presentation
difference that must not make "the same version" look different:

* letter case (``dlh_xd32e_210521003``): configuration tools and some
  firmware lower-case the string; the vendor format has no case meaning;
* ``-`` instead of ``_`` as a separator (``DLH-XD32E-210521003``): some
  vendors' build systems use dashes;
* an optional semantic suffix ``_V1.2.3`` (or ``-v1.2.3``): vendors that
  also carry a marketing version append it; it only breaks ties between
  builds with the same date and number;
* surrounding whitespace and NUL padding: CBP/1 sends ASCII24 fields
  NUL-padded on the right.

Kept strict on purpose: the date must be a real calendar date, the build
number has exactly 3 digits, the semantic suffix exactly three numbers. A
string that does not fit is *not* guessed at: it becomes an
:class:`OpaqueVersion`, which still supports what the upgrade machine needs
most (equality: "does the pile now report the target?") but refuses ordering
with :class:`VersionOrderError`, because "newer" would be a guess.

Equality of parsed versions ignores the tolerated presentation
differences (``raw`` keeps what the charger actually said, for sending back
and for the audit log); ``str()`` is the canonical form, and
``parse_version(str(v)) == v``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import TypeAlias

__all__ = [
    "FirmwareVersion",
    "OpaqueVersion",
    "Version",
    "VersionError",
    "VersionFormatError",
    "VersionOrderError",
    "parse_version",
]


class VersionError(Exception):
    """Base of the errors this module raises."""


class VersionFormatError(VersionError, ValueError):
    """The text is not in the vendor format (or is empty)."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(f"firmware version {text!r}: {why}")
        self.text = text
        self.why = why


class VersionOrderError(VersionError, TypeError):
    """An ordering comparison involving an opaque version.

    A TypeError, like any other unorderable comparison in Python (so
    ``sorted`` fails the usual way), but typed so callers can catch exactly it.
    """

    def __init__(self, left: object, right: object) -> None:
        super().__init__(
            f"firmware versions {str(left)!r} and {str(right)!r} cannot be ordered: "
            "at least one is not in the vendor format (compare for equality only)"
        )
        self.left = left
        self.right = right


# Padding that never belongs to a version: whitespace and the NULs of
# fixed-width ASCII fields.
_PADDING = " \t\r\n\x00"

_VENDOR_RE = re.compile(
    r"""
    (?P<vendor>[A-Z][A-Z0-9]{1,7})       # DLH
    [_-](?P<model>[A-Z0-9]{1,16})         # XD32E (ASCII16 in the CBP/1 login)
    [_-](?P<date>[0-9]{6})(?P<build>[0-9]{3})  # 210521 003
    (?:[_-]V(?P<major>[0-9]{1,6})\.(?P<minor>[0-9]{1,6})\.(?P<patch>[0-9]{1,6}))?
    """,
    re.VERBOSE,
)


def _strip(text: str) -> str:
    return text.strip(_PADDING)


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    """A version in the vendor format. Build with :meth:`parse` or :func:`parse_version`.

    Ordering is a total order: by vendor, model, build date, build number,
    then the semantic suffix (none sorts first). Only versions of the same
    product line (:meth:`same_line`) are meaningfully "older/newer"; across
    lines the order merely groups them, so decisions such as "is the pile
    already newer than the target?" must check :meth:`same_line` first.
    """

    vendor: str
    model: str
    build_date: date
    build: int
    semver: tuple[int, int, int] | None = None
    # What the charger sent (stripped of padding): equal versions may differ
    # here, so it takes no part in equality, ordering or hashing.
    raw: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Direct construction must not produce a value that parse() would
        # not: that is what makes parse(str(v)) == v hold for every instance.
        canonical = self._canonical()
        try:
            reparsed = FirmwareVersion.parse(canonical)
        except VersionFormatError as exc:
            raise VersionFormatError(canonical, f"fields out of range ({exc.why})") from None
        if reparsed._key() != self._key():
            raise VersionFormatError(canonical, "fields are not in canonical form (upper case)")
        if not self.raw:
            object.__setattr__(self, "raw", canonical)

    @classmethod
    def parse(cls, text: str) -> FirmwareVersion:
        """Parse the vendor format; raise :class:`VersionFormatError` otherwise."""
        raw = _strip(text)
        if not raw:
            raise VersionFormatError(text, "empty")
        m = _VENDOR_RE.fullmatch(raw.upper())
        if m is None:
            raise VersionFormatError(text, "not VENDOR_MODEL_YYMMDDNNN[_Vx.y.z]")
        digits = m["date"]
        try:
            built = date(2000 + int(digits[:2]), int(digits[2:4]), int(digits[4:]))
        except ValueError:
            raise VersionFormatError(text, f"build date {digits} is not a calendar date") from None
        semver = None
        if m["major"] is not None:
            semver = (int(m["major"]), int(m["minor"]), int(m["patch"]))
        # Built without validation: the regex has checked everything
        # __post_init__ would (and calling it here would recurse).
        version = object.__new__(cls)
        for name, value in (
            ("vendor", m["vendor"]),
            ("model", m["model"]),
            ("build_date", built),
            ("build", int(m["build"])),
            ("semver", semver),
            ("raw", raw),
        ):
            object.__setattr__(version, name, value)
        return version

    # --- presentation -----------------------------------------------------
    def _canonical(self) -> str:
        text = f"{self.vendor}_{self.model}_{self.build_date:%y%m%d}{self.build:03d}"
        if self.semver is not None:
            major, minor, patch = self.semver
            text += f"_V{major}.{minor}.{patch}"
        return text

    def __str__(self) -> str:
        return self._canonical()

    @property
    def product_line(self) -> tuple[str, str]:
        """(vendor, model): versions are only comparable in earnest within one line."""
        return (self.vendor, self.model)

    def same_line(self, other: Version) -> bool:
        return isinstance(other, FirmwareVersion) and other.product_line == self.product_line

    # --- ordering ---------------------------------------------------------
    def _key(self) -> tuple[str, str, date, int, tuple[int, ...]]:
        return (self.vendor, self.model, self.build_date, self.build, self.semver or ())

    def _other_key(self, other: object) -> tuple[str, str, date, int, tuple[int, ...]] | None:
        if isinstance(other, FirmwareVersion):
            return other._key()
        if isinstance(other, OpaqueVersion):
            raise VersionOrderError(self, other)
        return None

    def __lt__(self, other: object) -> bool:
        key = self._other_key(other)
        return NotImplemented if key is None else self._key() < key

    def __le__(self, other: object) -> bool:
        key = self._other_key(other)
        return NotImplemented if key is None else self._key() <= key

    def __gt__(self, other: object) -> bool:
        key = self._other_key(other)
        return NotImplemented if key is None else self._key() > key

    def __ge__(self, other: object) -> bool:
        key = self._other_key(other)
        return NotImplemented if key is None else self._key() >= key


@dataclass(frozen=True, slots=True)
class OpaqueVersion:
    """A version string in no known format: equal only to the same text.

    Case and inner characters are kept as they are (nothing is known about
    the format, so nothing may be normalised); only padding is stripped.
    Build with :func:`parse_version`; constructing one from text that *is*
    in the vendor format raises, so the same version never exists in both
    forms (which would make equality lie).
    """

    text: str

    def __post_init__(self) -> None:
        stripped = _strip(self.text)
        if not stripped:
            raise VersionFormatError(self.text, "empty")
        if _VENDOR_RE.fullmatch(stripped.upper()) is not None:
            try:
                FirmwareVersion.parse(stripped)
            except VersionFormatError:
                pass  # matches the shape but not a calendar date: opaque it is
            else:
                raise VersionFormatError(self.text, "is in the vendor format: use parse_version")
        object.__setattr__(self, "text", stripped)

    @property
    def raw(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text

    def same_line(self, other: Version) -> bool:
        """Unknown format, unknown line: never comparable."""
        return False

    def _refuse(self, other: object) -> None:
        if isinstance(other, FirmwareVersion | OpaqueVersion):
            raise VersionOrderError(self, other)

    def __lt__(self, other: object) -> bool:
        self._refuse(other)
        return NotImplemented

    def __le__(self, other: object) -> bool:
        self._refuse(other)
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        self._refuse(other)
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        self._refuse(other)
        return NotImplemented


Version: TypeAlias = FirmwareVersion | OpaqueVersion


def parse_version(text: str) -> Version:
    """The vendor format when it fits, otherwise an opaque version.

    Raises :class:`VersionFormatError` only for an empty (or all-padding)
    string: "no version" is not a version.
    """
    try:
        return FirmwareVersion.parse(text)
    except VersionFormatError:
        if not _strip(text):
            raise
        return OpaqueVersion(text)
