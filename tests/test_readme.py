"""README.md's Python examples run as written, in order, in one namespace, through the same code
with small budgets: every `epochs=N` becomes 2 and every sample count a few tens. A block whose
first line is `# NAME.py` is a file of the user's: it is written to NAME.py and importable."""

import os
import re
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
    monkeypatch.delitem(sys.modules, "my_parts", raising=False)  # the README's own, not tests/userpkg's
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
