"""README.md's examples run as written, through the same code with small budgets.

Python blocks run in order, in one namespace: every `epochs=N` becomes 2 and every sample count a
few tens; a block whose first line is `# NAME.py` is a file of the user's, written to NAME.py and
importable. Shell blocks: every `pyro-vae` and `torchrun` line runs in order in one folder, with
epochs / 20, 200 training images and K = 5 on 50 test images (compare: 2 seeds)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SMALL = [(r"\bepochs=\d+", "epochs=2"), (r"\biw_samples=\d+", "iw_samples=10"), (r"\bsamples=\d+", "samples=20")]


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def small_budget(code):
    for pattern, replacement in SMALL:
        code = re.sub(pattern, replacement, code)
    return code


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 4


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write runs/... relative to where they run
    monkeypatch.syspath_prepend(str(tmp_path))
    original = sys.modules.pop("my_parts", None)  # the README's own my_parts, not tests/userpkg's
    try:
        run_python_blocks(tmp_path)
    finally:
        sys.modules.pop("my_parts", None)
        if original is not None:
            sys.modules["my_parts"] = original


def run_python_blocks(tmp_path):
    namespace = {"__name__": "__readme__"}
    for number, block in enumerate(python_blocks(), 1):
        first = block.splitlines()[0].strip()
        module = re.fullmatch(r"# (\w+)\.py", first)
        if module:
            (tmp_path / f"{module.group(1)}.py").write_text(block)
            continue
        try:
            exec(compile(small_budget(block), f"README.md python block {number}", "exec"), namespace)
        except Exception as e:  # name the block: the traceback alone points into exec
            pytest.fail(f"README.md python block {number} failed: {type(e).__name__}: {e}\n{block}")
    assert sys.modules["my_parts"].__file__ == str(tmp_path / "my_parts.py")
    assert os.path.isdir(tmp_path / "runs")


def file_blocks():
    """The README's files of the user's: python blocks whose first line is `# NAME.py`."""
    return {m.group(1) + ".py": block for block in python_blocks()
            if (m := re.fullmatch(r"# (\w+)\.py", block.splitlines()[0].strip()))}


def shell_commands():
    """Every `pyro-vae ...` and `torchrun ...` line of README.md's bash blocks, comments removed,
    except `pyro-vae download` (the internet; tests/test_data.py runs it against a local server),
    and every `python NAME.py` line that runs one of the README's files."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command.startswith("python ") and command.split()[1] in file_blocks():
                lines.append(command)
            if command.startswith(("pyro-vae ", "torchrun ")) or command == "pyro-vae":
                if not command.startswith("pyro-vae download"):
                    lines.append(command)
    return lines


def small_command(command):
    """The same command on a small budget: epochs / 20 (at least 1; resume totals keep their order),
    200 training images, K = 5 on 50 test images."""
    args = shlex.split(command)
    args = [str(max(1, int(a) // 20)) if i and args[i - 1] == "--epochs" else a for i, a in enumerate(args)]
    args = ["5" if i and args[i - 1] == "--iw-samples" else a for i, a in enumerate(args)]
    sub = args[args.index("-m") + 2] if args[0] == "torchrun" else (args[1] if len(args) > 1 else "train")
    if sub in ("train", "quadrants") and "--resume" not in args:
        args += ["--train-size", "200"] + ([] if "--epochs" in args else ["--epochs", "1"])
    if sub in ("evaluate", "quadrants"):
        args += ["--examples", "50"]
    if sub == "compare" and "--summarize" not in args:  # 2 seeds, 200 images, K = 5 on 50 test images
        args = ["2" if i and args[i - 1] == "--seeds" else a for i, a in enumerate(args)]
        args += ["--train-size", "200", "--examples", "50", "--iw-samples", "5", "--fidelity-samples", "5", "--quiet"]
    return args


def test_readme_shell_commands_run(tmp_path, monkeypatch):
    from pyro_vae.cli import main

    commands = shell_commands()
    assert len(commands) >= 12
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the reference classifier's cache
    for name, text in file_blocks().items():
        (tmp_path / name).write_text(text)
    for command in commands:
        if command.startswith("python "):
            done = subprocess.run([sys.executable, *shlex.split(command)[1:]], capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, (command, done.stderr[-2000:])
            continue
        args = small_command(command)
        if args[0] == "torchrun":
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args[1:]], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (command, done.stderr[-2000:])
        else:
            assert main(args[1:]) == 0, command
