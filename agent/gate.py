"""``fieldpass check``: the boot gate.

This module and everything it imports stay off click, paho, provisioning, json,
tomllib, dataclasses and typing, so that the gate costs about twice a bare interpreter
(docs/performance.md). It reads the clock exactly once; nothing (no flag, environment
variable or config value) can move that clock or skip the decision.

Every run writes the verdict files, an error too: a config, keyring or identity
problem (78), a lock held too long (75), a user who may not read the data (71), a bug
(70) leave verdict "error" with the exit code and the reason, never a stale "valid".
A command line the gate cannot parse (2) is not a run: the files stay as they are.
The gate never prints a traceback.
"""

import os
import sys

from . import clock, exitcodes, fsio, jsonout, perms, report
from .config import DEFAULT_VERDICT_DIR, Config, ConfigError, load
from .device import Device
from .identity import IdentityError

USAGE = """\
Usage: fieldpass [--root DIR] [--config FILE] [--state-dir DIR] check [--json] [--online]

  The boot gate: decide whether this equipment may run, write the verdict to
  /run/fieldpass/verdict.json and verdict.env, and exit with the verdict.

  --online asks HQ first ([online] server, timeout_s): a revocation is recorded
  and HQ's signed time re-anchors the clock; if HQ cannot be reached in time,
  the offline verdict stands.

  Exit: 0 valid, 10 grace (limited mode), 20 expired, 30 not activated,
  31 invalid, 32 revoked, 40 clock rollback; 2 usage, 70 internal error,
  71 no access to the device's data (run as root), 75 locked, 78 configuration.
  An error leaves verdict "error" in the verdict files, never a stale "valid".

Examples:
  fieldpass check
  fieldpass check --json
  fieldpass check --online
  fieldpass --root /mnt/image check
"""


def main(root: str, config_path: str | None, state_dir: str | None, args: list[str]) -> int:
    as_json = online = False
    for arg in args:
        if arg == "--json":
            as_json = True
        elif arg == "--online":
            online = True
        elif arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return exitcodes.OK
        else:  # not a run of the gate: the verdict files stay as they are
            sys.stderr.write(USAGE)
            sys.stderr.write(f"fieldpass: error: check: unexpected argument {arg!r}\n")
            return exitcodes.USAGE
    run = _Run(root, as_json)
    try:
        return run.check(config_path, state_dir, online)
    except Exception as e:  # a bug: one line and an "error" verdict, never a traceback
        return run.fail(
            f"internal error ({type(e).__name__}): please report it",
            exitcodes.EX_SOFTWARE,
            "internal",
        )


class _Run:
    """One run of the gate; every way out writes the verdict files (an error too)."""

    def __init__(self, root: str, as_json: bool) -> None:
        self.root = root
        self.as_json = as_json
        self.cfg: Config | None = None

    def check(self, config_path: str | None, state_dir: str | None, online: bool) -> int:
        try:
            self.cfg = cfg = load(self.root, config_path, state_dir)
        except ConfigError as e:
            return self.fail(str(e), exitcodes.EX_CONFIG, e.reason)
        device = Device(cfg)
        notes = perms.warnings(cfg)
        try:
            if online:
                notes += _ask_hq(device)
            now = clock.now()
            with fsio.ExclusiveLock(cfg.state_dir):
                notes += device.adopt_provisioned(now)
                outcome = device.evaluate(now, record=True)
        except ConfigError as e:
            return self.fail(str(e), exitcodes.EX_CONFIG, e.reason)
        except IdentityError as e:
            return self.fail(str(e), exitcodes.EX_CONFIG, "no_identity")
        except fsio.LockTimeout as e:
            return self.fail(str(e), exitcodes.EX_TEMPFAIL, e.reason)
        except fsio.NoAccess:
            return self.fail(report.no_access_message(cfg), exitcodes.EX_NOACCESS, "no_access")
        doc = report.document(outcome, now)
        notes += [*outcome.notes, *_notes(doc)]
        doc["notes"] = notes
        problems = report.write_files(cfg, doc)
        if outcome.verdict.name != outcome.previous_verdict:
            from . import hooks  # only when the verdict changed: not on a routine boot

            problems += hooks.run(cfg.hooks_dir, doc, outcome.previous_verdict, cfg.root)
        doc["notes"] = notes + problems
        self._print(doc, report.text_lines(doc))
        for note in doc["notes"]:  # type: ignore[attr-defined]
            sys.stderr.write(f"fieldpass: warning: {note}\n")
        return outcome.verdict.exit_code

    def fail(self, message: str, code: int, reason: str) -> int:
        """End the run with an error: the verdict files say so, in place of a verdict
        an application could still read as "valid"."""
        doc = report.error_document(code, reason, message, clock.now())
        problems: list[str] = []
        if self.cfg is not None:
            problems = report.write_files(self.cfg, doc)
        elif reason != "no_root":  # the config is unknown: the default verdict directory
            problems = report.write_files_in(self._default_verdict_dir(), doc)
        doc["notes"] = problems
        sys.stderr.write(f"fieldpass: error: {message}\n")
        for note in problems:
            sys.stderr.write(f"fieldpass: warning: {note}\n")
        if self.as_json:
            self._print(doc, [])
        return code

    def _default_verdict_dir(self) -> str:
        if not self.root:
            return DEFAULT_VERDICT_DIR
        return os.path.join(self.root, DEFAULT_VERDICT_DIR.lstrip("/"))

    def _print(self, doc: dict[str, object], lines: list[str]) -> None:
        text = jsonout.dumps(doc, pretty=True) if self.as_json else "\n".join(lines)
        # A path from --root may hold undecodable bytes (lone surrogates): escaped.
        sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")


def _notes(doc: dict[str, object]) -> list[str]:
    notes = doc.get("notes")
    return [str(n) for n in notes] if isinstance(notes, list) else []


def _ask_hq(device: Device) -> list[str]:
    """The online half of ``check --online``; any failure to reach HQ is a note."""
    from . import online, sync

    try:
        return sync.validate(device, online.hqs(device.cfg), clock.now())
    except online.Unreachable as e:
        return [f"{e}: offline verdict"]
    except online.OnlineError as e:
        return [f"online check not possible ({e}): offline verdict"]
    except OSError as e:
        return [f"could not record HQ's answer ({fsio.describe(e)}): offline verdict"]
