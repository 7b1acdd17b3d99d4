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


def parse_size(text: str) -> int:
    """'50G', '500M', '1.5T', '1024' -> bytes. Binary units, as df -h and qemu-img use
    them; 'GB' means GiB too, because operators write it meaning that."""
    raw = text.strip().replace(" ", "")
    number = raw.rstrip("BbKkMmGgTtPpIi")
    suffix = raw[len(number):].upper()
    if suffix not in _SIZE_SUFFIX or not number:
        raise ValueError(f"{text!r} is not a size (examples: 50G, 500M, 1.5T)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size (examples: 50G, 500M, 1.5T)") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"{text!r}: a size must be a finite number >= 0")
    return int(value * _SIZE_SUFFIX[suffix])


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
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    suffix = raw[len(number):] or "s"
    if suffix not in _DURATION_SUFFIX or not number:
        raise ValueError(f"{text!r} is not a duration (examples: 7d, 12h, 30m)")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (examples: 7d, 12h, 30m)") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"{text!r}: a duration must be a finite number >= 0")
    return value * _DURATION_SUFFIX[suffix]
