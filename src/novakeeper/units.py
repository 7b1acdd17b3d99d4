"""Human units for operators: binary byte sizes and short durations."""

from __future__ import annotations

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; always a unit, one decimal from KiB up."""
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in _BYTE_UNITS:
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            if unit == "B":
                return f"{sign}{int(value)} B"
            return f"{sign}{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """Short durations, largest two units: '23 d 4 h', '3 h 12 min', '45 s'."""
    if seconds < 0:
        return "-" + human_age(-seconds)
    s = int(seconds)
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days} d {hours} h" if hours and days < 10 else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs and minutes < 10 else f"{minutes} min"
    return f"{secs} s"


_SIZE_SUFFIX = {
    "": 1, "B": 1,
    "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10,
    "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
    "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30,
    "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40,
    "P": 1 << 50, "PB": 1 << 50, "PIB": 1 << 50,
}


def _scaled(text: str, units: dict[str, int], what: str, examples: str,
            strip: str, default: str = "", upper: bool = False) -> float:
    """A finite number >= 0 followed by one of `units`' suffixes, scaled by it."""
    raw = text.strip().replace(" ", "")
    raw = raw.upper() if upper else raw.lower()
    number = raw.rstrip(strip)
    suffix = raw[len(number):] or default
    bad = f"{text!r} is not a {what} (examples: {examples})"
    if suffix not in units or not number:
        raise ValueError(bad)
    try:
        value = float(number)
    except ValueError:
        raise ValueError(bad) from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"{text!r}: a {what} must be a finite number >= 0")
    return value * units[suffix]


def parse_size(text: str) -> int:
    """'50G', '500M', '1.5T', '1024' -> bytes. Binary units, as df -h and qemu-img use
    them; 'GB' means GiB too, because operators write it meaning that."""
    return int(_scaled(text, _SIZE_SUFFIX, "size", "50G, 500M, 1.5T", "BKMGTPI", upper=True))


def parse_percent(text: str) -> float:
    """'85%' or '85' -> 85.0, strictly between 0 and 100."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a percentage (example: 85%)") from None
    if not 0 < value < 100:
        raise ValueError(f"{text!r}: a percentage must be between 0% and 100%, exclusive")
    return value


_DURATION_SUFFIX = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w', '3600' -> seconds."""
    return _scaled(text, _DURATION_SUFFIX, "duration", "7d, 12h, 30m",
                   "abcdefghijklmnopqrstuvwxyz", default="s")
