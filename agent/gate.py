"""``fieldpass check``: the boot gate.

This module and everything it imports stay off click, paho, provisioning, json,
tomllib, dataclasses and typing, so that the gate costs about twice a bare interpreter
(docs/performance.md). It reads the clock exactly once; nothing (no flag, environment
variable or config value) can move that clock or skip the decision.
"""

import sys
import time

from . import exitcodes, fsio, hooks, jsonout, report
from .config import ConfigError, load
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
  31 invalid, 32 revoked, 40 clock rollback, 2/64-78 usage or configuration.

Examples:
  fieldpass check
  fieldpass check --json
  fieldpass check --online
  fieldpass --root /mnt/image check
"""


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"fieldpass: error: {message}\n")
    return code


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
        else:
            sys.stderr.write(USAGE)
            return _fail(f"check: unexpected argument {arg!r}", exitcodes.USAGE)
    try:
        cfg = load(root, config_path, state_dir)
    except ConfigError as e:
        return _fail(str(e), exitcodes.EX_CONFIG)
    device = Device(cfg)
    online_notes: list[str] = []
    try:
        if online:
            online_notes = _ask_hq(device)
        now = int(time.time())
        with fsio.ExclusiveLock(cfg.state_dir):
            online_notes += device.adopt_provisioned(now)
            outcome = device.evaluate(now, record=True)
    except (ConfigError, IdentityError) as e:
        return _fail(str(e), exitcodes.EX_CONFIG)
    except fsio.LockTimeout as e:
        return _fail(str(e), exitcodes.EX_TEMPFAIL)
    doc = report.document(outcome, now)
    problems = report.write_files(cfg, doc)
    if outcome.verdict.name != outcome.previous_verdict:
        problems += hooks.run(cfg.hooks_dir, doc, outcome.previous_verdict)
    doc["notes"] = [*online_notes, *outcome.notes, *problems]
    if as_json:
        sys.stdout.write(jsonout.dumps(doc, pretty=True) + "\n")
    else:
        sys.stdout.write("\n".join(report.text_lines(doc)) + "\n")
    for note in doc["notes"]:  # type: ignore[attr-defined]
        sys.stderr.write(f"fieldpass: warning: {note}\n")
    return outcome.verdict.exit_code


def _ask_hq(device: Device) -> list[str]:
    """The online half of ``check --online``; any failure to reach HQ is a note."""
    from . import online, sync

    try:
        return sync.validate(device, online.hqs(device.cfg), int(time.time()))
    except online.Unreachable as e:
        return [f"{e}: offline verdict"]
    except online.OnlineError as e:
        return [f"online check not possible ({e}): offline verdict"]
    except OSError as e:
        return [f"could not record HQ's answer ({e}): offline verdict"]
