"""Exit codes and the one error type the CLI turns into a one-line message."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented in README.md; monitoring keys on them, so never renumber."""

    OK = 0
    INTERNAL = 1  # a bug: reported in one line, traceback with -vv
    USAGE = 2  # bad command line (click's own code)
    CONFIG = 3  # nova.conf / novakeeper.conf unreadable, malformed or invalid
    PATH = 4  # instances path or cache folder missing or not a folder
    PERMISSION = 5  # permission denied on the instances path or cache folder
    PROBLEMS = 6  # clean finished, but problems met while scanning held some files
    ABORTED = 7  # the operator declined the confirmation
    FAILED_REMOVALS = 8  # clean could not remove some files it planned to remove
    CROSS_CHECK = 9  # --cross-check found qemu-img disagreeing with our reading
    SHORTFALL = 10  # clean finished, but the budget cannot be met: the rest is in use/pinned
    BUSY = 11  # another novakeeper run holds this cache's run lock: nothing done
    CORRUPT = 12  # cache verify: a base's checksum does not match its record or Glance
    DOCTOR_WARN = 20  # doctor: the worst finding is a WARN
    DOCTOR_FAIL = 21  # doctor: at least one finding is a FAIL
    # cache fetch (30-36): nothing is left in the cache after any of these
    GLANCE = 30  # Glance (or Keystone) could not be reached or refused the request
    IMAGE_UNKNOWN = 31  # no such image in Glance
    IMAGE_NOT_ACTIVE = 32  # the image is queued, saving, killed, deactivated, ...
    HASH_MISMATCH = 33  # the download does not match os_hash_value / checksum: discarded
    NO_SPACE = 34  # not enough free space or cache budget for the image (checked first)
    NAME_CONFLICT = 35  # the base's name exists but is another file (or not a file)
    FETCH_FAILED = 36  # unsupported format, unacceptable content, qemu-img or write error


class NovakeeperError(Exception):
    """An expected failure: printed as `novakeeper: error: <message>`, exit `code`."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
