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
Usage: fieldpass [--root DIR] [--config FILE] [--state-dir DIR] check [--json]

  The boot gate: decide whether this equipment may run, write the verdict to
  /run/fieldpass/verdict.json and verdict.env, and exit with the verdict.

  Exit: 0 valid, 10 grace (limited mode), 20 expired, 30 not activated,
  31 invalid, 32 revoked, 40 clock rollback, 2/64-78 usage or configuration.

Examples:
  fieldpass check
  fieldpass check --json
  fieldpass --root /mnt/image check
"""


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"fieldpass: error: {message}\n")
    return code


def main(root: str, config_path: str | None, state_dir: str | None, args: list[str]) -> int:
    as_json = False
    for arg in args:
        if arg == "--json":
            as_json = True
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
    now = int(time.time())
    device = Device(cfg)
    try:
        with fsio.ExclusiveLock(cfg.state_dir):
            outcome = device.evaluate(now, record=True)
    except (ConfigError, IdentityError) as e:
        return _fail(str(e), exitcodes.EX_CONFIG)
    except fsio.LockTimeout as e:
        return _fail(str(e), exitcodes.EX_TEMPFAIL)
    doc = report.document(outcome, now)
    problems = report.write_files(cfg, doc)
    if outcome.verdict.name != outcome.previous_verdict:
        problems += hooks.run(cfg.hooks_dir, doc, outcome.previous_verdict)
    doc["notes"] = [*outcome.notes, *problems]
    if as_json:
        sys.stdout.write(jsonout.dumps(doc, pretty=True) + "\n")
    else:
        sys.stdout.write("\n".join(report.text_lines(doc)) + "\n")
    for note in doc["notes"]:  # type: ignore[attr-defined]
        sys.stderr.write(f"fieldpass: warning: {note}\n")
    return outcome.verdict.exit_code
