"""The daemon's persisted resume point (``<state_dir>/daemon.json``).

Everything that matters for the license (the machine file, the anti-downgrade serial,
a revocation) is in the device's own crash-safe state; this file only says where the
daemon was, so that a restart resumes there: a renewal that was asked for is asked
again straight after connecting, even if the clock says it is not due yet. It carries
a format version and a loop guard (``starts``: starts since the daemon last reached a
broker), which ``main`` uses to slow down a crash loop, and the license id of the last
machine file it saw (``license_id``: after ``fieldpass return`` the file is gone, yet
HQ's acknowledgement of the receipt names the license). A missing or damaged file means
"start fresh"; it is written through ``fsio.atomic_write``.
"""

import json
import os

from .. import fsio, jsonin

FORMAT_VERSION = 1
NAME = "daemon.json"
MAX_BYTES = 4096


class Resume:
    __slots__ = ("license_id", "renewing", "starts")

    def __init__(self, renewing: bool = False, starts: int = 0, license_id: str = "") -> None:
        self.renewing = renewing
        self.starts = starts
        self.license_id = license_id


def load(state_dir: str) -> Resume:
    try:
        data = fsio.read_bytes(os.path.join(state_dir, NAME), MAX_BYTES)
        doc = jsonin.loads_object(data, max_bytes=MAX_BYTES, max_depth=1) if data else None
    except (OSError, jsonin.JsonError):
        return Resume()
    if doc is None or type(doc.get("v")) is not int or doc.get("v") != FORMAT_VERSION:
        return Resume()
    renewing, starts = doc.get("renewing"), doc.get("starts")
    license_id = doc.get("license_id", "")
    if type(renewing) is not bool or type(starts) is not int or starts < 0:
        return Resume()
    if type(license_id) is not str or len(license_id) > 100:
        license_id = ""
    return Resume(renewing, starts, license_id)


def save(state_dir: str, resume: Resume) -> None:
    """Best effort: a failure to write is logged by the caller, never fatal."""
    doc = {
        "v": FORMAT_VERSION,
        "renewing": resume.renewing,
        "starts": resume.starts,
        "license_id": resume.license_id,
    }
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fsio.atomic_write(os.path.join(state_dir, NAME), json.dumps(doc).encode("ascii"), 0o600)
