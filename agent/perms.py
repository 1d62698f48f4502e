"""Ownership and mode checks, as ssh makes on its keys, for what the gate trusts.

A hooks directory or hook that another user can write lets that user run code as root;
a keyring, agent.toml, state directory or verdict directory that another user can
write lets them forge or replay what the gate trusts, or fake the verdict applications
read. Safe means: owned by root or by the user running the gate, and neither group- nor
world-writable; the same for the directory that holds it, unless that directory is
sticky (/tmp) and the entry is owned safely.

The gate refuses to run an unsafe hook (or any hook of an unsafe directory) and warns
loudly about the rest: refusing those would lock out a device whose license is valid.
A few stat calls, no imports beyond ``os`` and ``stat``: this is on the boot path. It
never changes a mode or an owner.
"""

import os
import stat

from .config import Config

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def entry_problem(path: str, st: os.stat_result) -> str:
    """Why ``path`` (already lstat'ed) is unsafe to trust, or ""."""
    if not _owner_ok(st):
        return f"{path} is owned by uid {st.st_uid}, not root"
    if st.st_mode & _WRITABLE_BY_OTHERS:
        who = "world" if st.st_mode & stat.S_IWOTH else "group"
        return f"{path} is {who}-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def path_problem(path: str) -> str:
    """Why ``path`` or the directory holding it is unsafe, or "" (also when absent)."""
    try:
        st = os.lstat(path)
    except OSError:
        return ""
    problem = entry_problem(path, st)
    if problem:
        return problem
    parent = os.path.dirname(path.rstrip("/")) or "/"
    try:
        pst = os.stat(parent)
    except OSError:
        return ""
    if pst.st_mode & stat.S_ISVTX and _owner_ok(pst):
        return ""  # sticky: nobody else can rename or replace what is in it
    return entry_problem(parent, pst)


def warnings(cfg: Config) -> list[str]:
    """One loud note per unsafe thing the gate trusts (hooks are checked as they run)."""
    what = (
        (cfg.keyring, "anyone who can write it can make a forged license pass"),
        (cfg.path, "anyone who can write it can choose the keyring, hooks and clock policy"),
        (cfg.state_dir, "anyone who can write it can replay an older state or file"),
        (cfg.verdict_dir, "anyone who can write it can fake the verdict applications read"),
    )
    notes = []
    for path, risk in what:
        problem = path_problem(path)
        if problem:
            notes.append(
                f"UNSAFE: {problem}: {risk}; make it root-owned and not group- or world-writable"
            )
    return notes
