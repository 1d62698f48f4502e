"""On-verdict hooks: executables in the hooks directory, run when the verdict changes.

Contract (firmware-hooks/README.md): run in lexical order, each with the verdict
environment (the variables of verdict.env) plus FIELDPASS_PREVIOUS_VERDICT, stdin
closed, a 10-second timeout. Their exit status is reported and never changes the
verdict. Files whose names start with "." or end in "~" are skipped.
"""

import os

from . import report

HOOK_TIMEOUT_S = 10


def run(hooks_dir: str, doc: dict[str, object], previous: str) -> list[str]:
    """Run every hook; return one line per hook that failed."""
    try:
        names = sorted(os.listdir(hooks_dir))
    except OSError:
        return []
    hooks = [
        os.path.join(hooks_dir, n)
        for n in names
        if not n.startswith(".")
        and not n.endswith("~")
        and os.access(os.path.join(hooks_dir, n), os.X_OK)
        and os.path.isfile(os.path.join(hooks_dir, n))
    ]
    if not hooks:
        return []
    import subprocess

    env = dict(os.environ)
    for line in report.env_text(doc).splitlines():
        key, _, quoted = line.partition("=")
        env[key] = quoted[1:-1]
    env["FIELDPASS_PREVIOUS_VERDICT"] = previous
    problems = []
    for hook in hooks:
        try:
            result = subprocess.run(
                [hook],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=HOOK_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            problems.append(f"hook {hook} timed out after {HOOK_TIMEOUT_S} s")
            continue
        except OSError as e:
            problems.append(f"hook {hook} could not run: {e.strerror}")
            continue
        if result.returncode != 0:
            problems.append(f"hook {hook} exited {result.returncode}")
    return problems
