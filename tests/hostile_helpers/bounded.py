"""Run operations of pyro_vae in this (child) process under an address-space ceiling.

    python bounded.py SPEC_JSON

SPEC_JSON: {"headroom_mb": H, "bomb_bytes": B, "ops": [OP, ...]}, each OP one of
    {"read_idx": PATH, "dims": N}   pyro_vae.data.read_idx(PATH, N)
    {"main": [ARG, ...]}            pyro_vae.cli.main(ARGS), its stdout and stderr captured

The child imports pyro_vae (and its CLI), reads its own VmPeak (the baseline), then sets
RLIMIT_AS to baseline + H MB: every allocation past that fails, as it would on a machine (or
under `ulimit -v`) with that little memory. It then checks that the ceiling has teeth: an
allocation of B bytes (what the bomb would need if it were materialised) must fail. Then it runs
the operations, each caught whatever it raises, and prints one JSON line:

    {"base_mb", "ceiling_mb", "teeth", "peak_mb", "results": [{"outcome": ..., ...}, ...]}

outcome is "ok" (read_idx returned), "UserError" (read_idx refused), "exit" (main returned a
status) or the name of any other exception that escaped."""

import contextlib
import io
import json
import resource
import sys


def vm_mb(key="VmPeak"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def run(op):
    from pyro_vae.errors import UserError

    if "read_idx" in op:
        from pyro_vae.data import read_idx

        try:
            array = read_idx(op["read_idx"], op["dims"])
            return {"outcome": "ok", "shape": list(array.shape)}
        except UserError as e:
            return {"outcome": "UserError", "message": str(e)}
        except BaseException as e:  # noqa: BLE001 - the point is to see what escapes
            return {"outcome": type(e).__name__, "message": str(e)[:500]}
    from pyro_vae.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(op["main"])
        return {"outcome": "exit", "status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}
    except BaseException as e:  # noqa: BLE001
        return {"outcome": type(e).__name__, "message": str(e)[:500], "stderr": err.getvalue()[-2000:]}


def main():
    spec = json.loads(sys.argv[1])
    import pyro_vae  # noqa: F401  the baseline: the package and its CLI imported
    import pyro_vae.cli  # noqa: F401

    base = vm_mb()
    ceiling = int((base + spec["headroom_mb"]) * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        bytearray(spec["bomb_bytes"])
        teeth = False
    except MemoryError:
        teeth = True
    results = [run(op) for op in spec["ops"]]
    print(json.dumps({"base_mb": base, "ceiling_mb": ceiling / 2**20, "teeth": teeth, "peak_mb": vm_mb(),
                      "results": results}))


if __name__ == "__main__":
    main()
