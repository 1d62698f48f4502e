"""On-verdict hooks: executables in the hooks directory, run when the verdict changes.

Contract (firmware-hooks/README.md): run in lexical order, each with the verdict
environment (the variables of verdict.env, built from the same values, never by
parsing the file) plus FIELDPASS_PREVIOUS_VERDICT and FIELDPASS_ROOT, stdin closed,
stdout discarded, stderr inherited (the journal). All hooks together get
``BUDGET_S`` seconds, well inside the gate unit's 60-second start timeout; a hook
still running when its share ends is killed with its process group, and hooks left
without time are not started. Their exit status is reported and never changes the
verdict. Files whose names start with "." or end in "~", directories and files that
are not executable are skipped; symlinks, hooks that are not root-owned (or owned by
the user running the agent) or are group/world-writable, and every hook of a
directory that is, are refused with a note (they could run anyone's code as root).
"""

import os
import stat
import time

from . import perms, report

if False:  # typing only: subprocess is imported when there is a hook to run
    import subprocess

BUDGET_S = 15


def _candidates(hooks_dir: str) -> tuple[list[str], list[str]]:
    """The hooks that may run, and a note for each one refused."""
    try:
        names = sorted(os.listdir(hooks_dir))
    except OSError:
        return [], []
    unsafe_dir = perms.path_problem(hooks_dir)
    hooks: list[str] = []
    notes: list[str] = []
    for name in names:
        if name.startswith(".") or name.endswith("~"):
            continue
        path = os.path.join(hooks_dir, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            notes.append(f"hook {path} refused: it is a symbolic link")
        elif not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            continue
        elif unsafe_dir:
            notes.append(f"hook {path} refused: {unsafe_dir}")
        elif problem := perms.entry_problem(path, st):
            notes.append(f"hook {path} refused: {problem}")
        else:
            hooks.append(path)
    return hooks, notes


def run(hooks_dir: str, doc: dict[str, object], previous: str, root: str = "") -> list[str]:
    """Run every hook; return one line per hook that failed or was refused."""
    hooks, problems = _candidates(hooks_dir)
    if not hooks:
        return problems
    import signal
    import subprocess

    env = dict(os.environ)
    env.update(report.env_pairs(doc))
    env["FIELDPASS_PREVIOUS_VERDICT"] = report.env_value(previous)
    env["FIELDPASS_ROOT"] = root
    deadline = time.monotonic() + BUDGET_S
    for hook in hooks:
        left = deadline - time.monotonic()
        if left <= 0:
            problems.append(f"hook {hook} not run: the hooks used up their {BUDGET_S} s")
            continue
        try:
            proc = subprocess.Popen(
                [hook],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killed whole on timeout
            )
        except OSError as e:
            problems.append(f"hook {hook} could not run: {e.strerror}")
            continue
        code = _wait(proc, left)
        if code is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            problems.append(f"hook {hook} killed: still running when the {BUDGET_S} s ran out")
        elif code != 0:
            problems.append(f"hook {hook} exited {code}")
    return problems


def _wait(proc: "subprocess.Popen[bytes]", timeout_s: float) -> int | None:
    """The hook's exit status, or None if it still runs after ``timeout_s``. Waits on a
    pidfd with poll(2) (no sleeping loop, which is also what libfaketime cannot break);
    kernels before 5.3 fall back to Popen.wait."""
    import select
    import subprocess

    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(max(1, int(timeout_s * 1000))):
            return None
    finally:
        os.close(fd)
    return proc.wait()
