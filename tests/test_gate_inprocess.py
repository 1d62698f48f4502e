"""Exhaustive checks through the gate's own code in process (thousands of runs would
take minutes as subprocesses; tests/test_gate.py covers the installed script)."""

import io
from contextlib import redirect_stderr, redirect_stdout

from agent import gate
from tests.conftest import DeviceRoot, Signer


def run_gate(device: DeviceRoot) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = gate.main(str(device.path), None, None, [])
    return code, out.getvalue() + err.getvalue()


def test_every_single_bit_flip_of_the_stored_file_gives_31(
    device: DeviceRoot, signer: Signer
) -> None:
    data = signer.provision(device)
    assert run_gate(device)[0] == 0
    for i in range(len(data) * 8):
        mutated = bytearray(data)
        mutated[i // 8] ^= 1 << (i % 8)
        device.machine_file.write_bytes(bytes(mutated))
        code, text = run_gate(device)
        assert code == 31, (i, text)
        assert "Traceback" not in text
    device.machine_file.write_bytes(data)
    assert run_gate(device)[0] == 0


def test_every_single_bit_flip_of_the_state_never_accepts_silently(
    device: DeviceRoot, signer: Signer
) -> None:
    """Both slots flipped: the state is refused (31), never reset into acceptance."""
    signer.provision(device)
    run_gate(device)
    slots = [device.state_dir / "state.a", device.state_dir / "state.b"]
    originals = [p.read_bytes() for p in slots]
    for i in range(0, min(len(b) for b in originals) * 8, 3):
        for path, blob in zip(slots, originals, strict=True):
            mutated = bytearray(blob)
            mutated[i // 8] ^= 1 << (i % 8)
            path.write_bytes(bytes(mutated))
        code, _ = run_gate(device)
        assert code == 31, i
    for path, blob in zip(slots, originals, strict=True):
        path.write_bytes(blob)
    assert run_gate(device)[0] == 0
