"""A hostile user against the promises: a run is never lost, resources are bounded, every error is
one line.

1. Memory bombs, each in a child process under an address-space ceiling (RLIMIT_AS, see
   hostile_helpers/bounded.py): a gzip IDX file that inflates to 3 GiB, checkpoints that claim
   GiB-sized tensors in a few KB, a sparse 4 GiB config.json.
2. Downloads from a local HTTP server that never stops, trickles, or announces too much.
3. Fuzzed config.json (hypothesis) against `pyro-vae sample`.
4. Fuzzed checkpoint.pt (hypothesis) against `pyro-vae train --resume` and `pyro-vae evaluate`.

Each test asserts the exact outcome (exit status, the one `pyro-vae: error:` line, its words) and,
by sha256, that no file that must stay the same changed. The bugs these tests found when they were
written (integers beyond float range, nesting past the recursion limit, part paths naming callables
that are no parts, damaged optimizer and random generator states, histories without metrics, a
trickling server, headers that claim gigabytes) are fixed; each has a named test, and the fuzz
strategies include those inputs.

Set HOSTILE_FUZZ=N to explore with N random examples per fuzz test instead of the fixed, quick
derandomized ones the suite runs.
"""

import contextlib
import copy
import gzip
import http.server
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import pyro_vae
from pyro_vae import data as data_module
from pyro_vae.cli import main
from pyro_vae.data import EXTRA_COUNTED, download
from pyro_vae.errors import UserError
from pyro_vae.models import MODELS
from pyro_vae.objectives import ELBOS
from pyro_vae.parts import GUIDES, LIKELIHOODS, PRIORS
from pyro_vae.runs.store import LOCK_FILE
from run_helpers import hashes, sha256

HELPER = Path(__file__).parent / "hostile_helpers" / "bounded.py"
HEADROOM_MB = 1536  # the ceiling: the child's VmPeak after `import pyro_vae` + 1.5 GiB
TINY = dict(dataset="digits", hidden=8, z_dim=2, train_size=64, epochs=1, device="cpu")

EXPLORE = int(os.environ.get("HOSTILE_FUZZ", "0"))


def fuzz_settings(examples):
    """Quick and repeatable in the suite; HOSTILE_FUZZ=N explores N random examples."""
    return settings(max_examples=EXPLORE or examples, derandomize=not EXPLORE, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


# ---- shared helpers --------------------------------------------------------------------------------

def cli(argv):
    """main(argv) in-process: (status, stdout, stderr). Any exception other than SystemExit escapes."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def assert_one_line(stderr, *needles):
    assert stderr.count("\n") == 1 and stderr.startswith("pyro-vae: error: "), stderr
    for needle in needles:
        assert needle in stderr, (needle, stderr)


def evaluate_argv(run):
    return ["evaluate", str(run), "--iw-samples", "2", "--quiet", "--device", "cpu"]


def resume_argv(run):
    return ["train", "--resume", str(run), "--epochs", "3", "--quiet"]


def no_temporaries(folder):
    return not [p.name for p in Path(folder).iterdir() if p.name.startswith(".pyro-vae-tmp.")]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache (downloads, reference classifiers) or data variable."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(data_module.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A real one-epoch run, trained once; tests damage copies of it."""
    return pyro_vae.train(out=tmp_path_factory.mktemp("pristine") / "run", progress=False, **TINY)


@pytest.fixture(scope="module")
def pristine_state(pristine):
    return torch.load(pristine / "checkpoint.pt", weights_only=True)


@pytest.fixture
def run(pristine, tmp_path):
    copy_ = tmp_path / "run"
    shutil.copytree(pristine, copy_)
    return copy_


def save_state(run_dir, state):
    torch.save(state, Path(run_dir) / "checkpoint.pt")
    return Path(run_dir) / "checkpoint.pt"


# ---- 1. memory bombs, under a ceiling ---------------------------------------------------------------

def bounded(ops, bomb_bytes, cwd, timeout=300):
    """Run `ops` (see hostile_helpers/bounded.py) in a child process whose address space is capped
    at its VmPeak after `import pyro_vae` + HEADROOM_MB; the child first proves that `bomb_bytes`
    (what the bomb needs, materialised) cannot be allocated under that cap."""
    env = {k: v for k, v in os.environ.items() if k != data_module.ENV_VAR}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               XDG_CACHE_HOME=str(Path(cwd) / "cache"), PYTHONPATH=str(Path(__file__).parents[1]))
    spec = {"headroom_mb": HEADROOM_MB, "bomb_bytes": bomb_bytes, "ops": ops}
    done = subprocess.run([sys.executable, str(HELPER), json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["teeth"], f"a {bomb_bytes >> 20} MB allocation fits under the ceiling {report}: it proves nothing"
    assert report["peak_mb"] <= report["ceiling_mb"] + 1
    return report


IDX_HEADER = struct.pack(">HBB3I", 0, 8, 3, 2, 28, 28)  # 2 images of 28x28: 1568 bytes of data
IDX_DATA = IDX_HEADER + bytes(2 * 28 * 28)


def write_gzip_bomb(path, prefix, chunks, chunk=64 << 20, members=False):
    """A .gz file that inflates to `prefix` + `chunks` x `chunk` zero bytes, built without ever
    holding more than one chunk. members=False: one deflate stream, in which the compressed
    chunk (ended by a full flush: byte-aligned, no reference to earlier data) is repeated.
    members=True: a gzip member per chunk (a reader must inflate them one after another)."""
    zero_mib = bytes(1 << 20)
    with open(path, "wb") as f:
        if members:
            f.write(gzip.compress(prefix, mtime=0))
            member = gzip.compress(bytes(chunk), compresslevel=9, mtime=0)
            for _ in range(chunks):
                f.write(member)
            return path
        c = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: the gzip framing is written here
        head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
        piece = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")  # gzip header: deflate, no name, mtime 0
        f.write(head)
        crc = zlib.crc32(prefix)
        for _ in range(chunks):
            f.write(piece)
        for _ in range(chunks * chunk // len(zero_mib)):
            crc = zlib.crc32(zero_mib, crc)
        crc = zlib.crc32(bytes(chunks * chunk % len(zero_mib)), crc)
        f.write(b"\x03\x00")  # a final, empty block (fixed Huffman: end-of-block only)
        f.write(struct.pack("<II", crc, (len(prefix) + chunks * chunk) & 0xFFFFFFFF))
    return path


@pytest.mark.parametrize("members", [False, True])
def test_gzip_bomb_builder_is_a_valid_gzip_file(tmp_path, members):
    """The bombs below are made by this builder: small, it inflates exactly, checksums and all."""
    path = write_gzip_bomb(tmp_path / "small.gz", IDX_DATA, chunks=3, chunk=1 << 20, members=members)
    assert gzip.decompress(path.read_bytes()) == IDX_DATA + bytes(3 << 20)


@pytest.fixture(scope="module")
def idx_bombs(tmp_path_factory):
    """One child under the ceiling reads: the 3 GiB bomb as one deflate stream, as 48 gzip members,
    and a 30-byte file whose header claims 3.1 GB of images."""
    folder = tmp_path_factory.mktemp("idx")
    stream = write_gzip_bomb(folder / "stream-images-idx3-ubyte.gz", IDX_DATA, chunks=48)
    members = write_gzip_bomb(folder / "members-images-idx3-ubyte.gz", IDX_DATA, chunks=48, members=True)
    claims = folder / "claims-images-idx3-ubyte.gz"
    claims.write_bytes(gzip.compress(struct.pack(">HBB3I", 0, 8, 3, 4_000_000, 28, 28) + bytes(100), mtime=0))
    files = [stream, members, claims]
    before = {p: sha256(p) for p in files}
    start = time.monotonic()
    report = bounded([{"read_idx": str(p), "dims": 3} for p in files], bomb_bytes=3 << 30, cwd=folder)
    report["seconds"] = time.monotonic() - start
    assert {p: sha256(p) for p in files} == before
    return files, report


@pytest.mark.parametrize("which", [0, 1], ids=["one-deflate-stream", "gzip-members"])
def test_gzip_bomb_idx_file_is_refused_within_the_ceiling(idx_bombs, which):
    files, report = idx_bombs
    assert files[which].stat().st_size < 8 << 20  # a few MB on disk, 3 GiB inflated
    result = report["results"][which]
    assert result["outcome"] == "UserError", result
    assert result["message"] == (f"{files[which]}: header says 2x28x28 = 1568 bytes of data, file holds more than "
                                 f"{1568 + EXTRA_COUNTED}")
    assert report["seconds"] < 120


def test_idx_header_claiming_gigabytes_with_no_data_is_a_user_error_within_the_ceiling(idx_bombs):
    files, report = idx_bombs
    result = report["results"][2]
    assert result["outcome"] == "UserError", result
    assert result["message"] == f"{files[2]}: header says 4000000x28x28 = 3136000000 bytes of data, file holds 100"


BOMB = 2**30  # float32 elements: 4 GiB materialised, one element (4 bytes) on disk


@pytest.fixture(scope="module")
def checkpoint_bombs(pristine, tmp_path_factory):
    """Run directories whose checkpoint claims a 4 GiB tensor in a few KB (a stride-0 view saved with
    its one-element storage), and one whose config.json is a sparse 4 GiB file; one child under the
    ceiling evaluates, resumes and samples them."""
    folder = tmp_path_factory.mktemp("bombs")
    state = torch.load(pristine / "checkpoint.pt", weights_only=True)
    bomb = torch.zeros(1).expand(BOMB)
    runs = {}
    for name, damage in [
        ("extra-entry", lambda s: s.__setitem__("bomb", bomb)),
        ("adam-moment", lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", bomb)),
        ("optimizer-extra", lambda s: s["optimizer"]["state"].__setitem__(99, {"exp_avg": bomb})),
    ]:
        runs[name] = folder / name
        shutil.copytree(pristine, runs[name])
        damaged = copy.deepcopy(state)
        damage(damaged)
        save_state(runs[name], damaged)
        assert (runs[name] / "checkpoint.pt").stat().st_size < 1 << 20  # cheap on disk
    runs["sparse-config"] = folder / "sparse-config"
    shutil.copytree(pristine, runs["sparse-config"])
    os.truncate(runs["sparse-config"] / "config.json", 4 << 30)
    if os.stat(runs["sparse-config"] / "config.json").st_blocks * 512 > 64 << 20:
        (runs["sparse-config"] / "config.json").unlink()
        pytest.skip("this file system has no sparse files")
    def fingerprint():  # the sparse config.json by size and blocks, not read (that is 4 GiB)
        sparse = os.stat(runs["sparse-config"] / "config.json")
        return {name: hashes(r, skip=(LOCK_FILE, "config.json") if name == "sparse-config" else (LOCK_FILE,))
                for name, r in runs.items()} | {"sparse config.json": (sparse.st_size, sparse.st_blocks)}

    before = fingerprint()
    ops = [
        {"main": evaluate_argv(runs["extra-entry"])},
        {"main": evaluate_argv(runs["adam-moment"])},
        {"main": resume_argv(runs["adam-moment"])},
        {"main": evaluate_argv(runs["optimizer-extra"])},
        {"main": resume_argv(runs["optimizer-extra"])},
        {"main": ["sample", str(runs["sparse-config"]), "--n", "4", "--device", "cpu", "--out", str(folder / "s.png")]},
    ]
    report = bounded(ops, bomb_bytes=4 << 30, cwd=folder)
    after = fingerprint()
    return runs, report, before, after


def test_checkpoint_with_an_extra_4gib_entry_is_refused_within_the_ceiling(checkpoint_bombs):
    runs, report, before, after = checkpoint_bombs
    result = report["results"][0]
    assert result["outcome"] == "exit" and result["status"] == 2, result
    assert_one_line(result["stderr"], f"{runs['extra-entry']}/checkpoint.pt: refused: unexpected entries bomb")
    assert after["extra-entry"] == before["extra-entry"]


@pytest.mark.parametrize("name, first", [("adam-moment", 1), ("optimizer-extra", 3)])
def test_checkpoint_claiming_4gib_of_optimizer_state_is_refused_by_the_budget(checkpoint_bombs, name, first):
    runs, report, before, after = checkpoint_bombs
    for result in report["results"][first:first + 2]:  # evaluate, then train --resume
        assert result["outcome"] == "exit" and result["status"] == 2, result
        assert_one_line(result["stderr"], f"{runs[name]}/checkpoint.pt: refused: it holds 4096 MB of tensors, "
                                          f"and a checkpoint of this model at most")
    assert after[name] == before[name]  # the failed resume wrote nothing (the lock file aside)


def test_sparse_4gib_config_json_is_a_one_line_error_within_the_ceiling(checkpoint_bombs):
    runs, report, before, after = checkpoint_bombs
    result = report["results"][5]
    assert result["outcome"] == "exit" and result["status"] == 2, result
    assert_one_line(result["stderr"], "config.json")
    assert after["sparse-config"] == before["sparse-config"]
    assert after["sparse config.json"] == before["sparse config.json"]


# ---- 2. downloads from a hostile server --------------------------------------------------------------

class HostileHandler(http.server.BaseHTTPRequestHandler):
    """/endless/...: zeros forever; /announce/...: Content-Length 1 TB, then nothing; /trickle/...:
    one byte every 50 ms; /missing/...: 404. Each mode stops when the server's `stop` is set."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        mode = self.path.split("/")[1]
        server = self.server
        if mode == "missing":
            self.send_error(404)
            return
        self.send_response(200)
        if mode == "announce":
            self.send_header("Content-Length", str(10**12))
        self.end_headers()
        try:
            while not server.stop.is_set():
                if mode == "endless":
                    # counted before the write: the client may read this chunk and the test look at
                    # the count before this thread runs again
                    server.sent[mode] = server.sent.get(mode, 0) + (1 << 16)
                    self.wfile.write(bytes(1 << 16))
                elif mode == "trickle":
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    server.sent[mode] = server.sent.get(mode, 0) + 1
                    time.sleep(0.05)
                else:
                    server.sent.setdefault(mode, 0)
                    time.sleep(0.05)
        except OSError:  # the client hung up, as it should
            pass


@pytest.fixture
def hostile_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostileHandler)
    server.daemon_threads = True
    server.stop, server.sent = threading.Event(), {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/"
    server.stop.set()
    server.shutdown()
    server.server_close()


def timed_download(dest, mirror, limit, **kwargs):
    """download() in a thread, given `limit` seconds: (finished, seconds, the exception or None)."""
    outcome = {}

    def go():
        start = time.monotonic()
        try:
            download("mnist", dest, mirrors=[mirror], progress=False, **kwargs)
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001
            outcome["error"] = e
        outcome["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(limit)
    return (not thread.is_alive()), outcome.get("seconds"), outcome.get("error"), thread


def test_endless_response_is_cut_at_max_bytes_and_leaves_nothing(hostile_server, tmp_path):
    server, url = hostile_server
    dest = tmp_path / "dest"
    finished, seconds, error, _ = timed_download(dest, url + "endless/", 30, max_bytes=1 << 20)
    assert finished and seconds < 30
    assert isinstance(error, UserError)
    assert str(error) == (f"could not download train-images-idx3-ubyte.gz: {url}endless/train-images-idx3-ubyte.gz: "
                          f"stopped after {1 << 20} bytes, more than a data file may have")
    assert list(dest.iterdir()) == []  # no file, no temporary
    assert server.sent["endless"] > 1 << 20


def test_content_length_over_the_cap_is_refused_before_reading(hostile_server, tmp_path):
    server, url = hostile_server
    dest = tmp_path / "dest"
    # The server sends no byte of the body: a client that tried to read it would wait (and fail the limit).
    finished, seconds, error, _ = timed_download(dest, url + "announce/", 10, max_bytes=1 << 20)
    assert finished and seconds < 10
    assert isinstance(error, UserError)
    assert str(error) == (f"could not download train-images-idx3-ubyte.gz: {url}announce/train-images-idx3-ubyte.gz: "
                          f"the server announces {10**12} bytes, more than the {1 << 20} a data file may have")
    assert list(dest.iterdir()) == []


def test_trickling_server_is_given_up_after_seconds(hostile_server, tmp_path):
    server, url = hostile_server
    dest = tmp_path / "dest"
    finished, seconds, error, thread = timed_download(dest, url + "trickle/", 5, seconds=1)
    try:
        assert finished, "download(seconds=1) still running after 5 s against a trickling server"
        assert isinstance(error, UserError) and "time limit" in str(error)
        assert list(dest.iterdir()) == []
    finally:
        server.stop.set()  # the server hangs up: a stuck download ends (checksum mismatch)
        thread.join(30)


def open_files_under(folder):
    """{fd: target} of this process's open file descriptors that point into `folder`."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found[int(fd)] = target
    return found


def test_failed_mirrors_leave_no_open_file(hostile_server, tmp_path):
    server, url = hostile_server
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    closed.close()
    dest = tmp_path / "dest"
    try:
        with pytest.raises(UserError, match="could not download train-images-idx3-ubyte.gz: .*404.*refused"):
            download("mnist", dest, mirrors=[url + "missing/", refused], progress=False)
        assert list(dest.iterdir()) == []
        assert open_files_under(dest) == {}
    finally:
        for fd in open_files_under(dest):  # don't leave the leak open for the rest of the session
            os.close(fd)


# ---- 3. fuzzed config.json ----------------------------------------------------------------------------

NAMES = [*MODELS, "digits", "mnist", "kmnist", "cifar", *PRIORS, *GUIDES, *LIKELIHOODS, *ELBOS, "cpu", "cuda",
         "cuda:7", "auto", "", "None", "null", "NaN"]  # not fashion-mnist: it is installed here, and slow to load
# Import paths that must be refused in one line, including real callables that are no parts.
IMPORT_PATHS = ["builtins:print", "builtins:int", "no_such_module_hostile:Thing", ":", "pyro_vae:", "pyro_vae:no_such_name", "pyro_vae.parts:",
                "os.path:no_such_name", "no_such_module_hostile:", "..:x", "pyro_vae..parts:X"]

FUZZ_INTS = st.one_of(st.integers(-3, 100), st.sampled_from([2**31, 2**32, 2**63, -2**63, 10**12, 10**30, 10**300, 10**400,
                                                               -10**300]))
SMALL_INTS = st.one_of(st.integers(-3, 700), st.integers(-2**31, 2**31 - 1), st.sampled_from([-1, 2**40, 2**70, 10**30]))
FUZZ_FLOATS = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 5e-324, 1e-300, 0.5, 0.9999999, 1e308]))
FUZZ_TEXT = st.one_of(st.text(max_size=24).filter(lambda s: ":" not in s), st.sampled_from(NAMES + IMPORT_PATHS))


def json_values(ints=FUZZ_INTS):
    scalars = st.one_of(st.none(), st.booleans(), ints, FUZZ_FLOATS, FUZZ_TEXT)
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=8)


JSON = json_values()
JSON_SMALL = json_values(SMALL_INTS)
DEEP_DOCUMENTS = ["[" * 100000 + "]" * 100000, '{"a":' * 100000 + "1" + "}" * 100000, "[" * 100000,
                  '{"model":' + "[" * 100000 + "]" * 100000 + "}"]


@st.composite
def config_documents(draw, base):
    """config.json as a hostile user leaves it: bytes."""
    text = json.dumps(base, indent=2)
    keys = sorted(base) + ["unknown_setting", ""]
    kind = draw(st.sampled_from(["replace", "delete", "nest", "whole", "deep", "raw"]))
    note(f"config.json: {kind}")
    event(f"config.json: {kind}")
    if kind == "replace":
        doc = json.dumps({**base, draw(st.sampled_from(keys)): draw(JSON)})
    elif kind == "delete":
        gone = draw(st.sampled_from(sorted(base)))
        doc = json.dumps({k: v for k, v in base.items() if k != gone})
    elif kind == "nest":
        key, depth = draw(st.sampled_from(sorted(base))), draw(st.sampled_from([1, 2, 5, 50, 200, 5000, 100000]))
        inner = json.dumps(base[key])
        nested = ("[" * depth + inner + "]" * depth) if draw(st.booleans()) else ('{"x":' * depth + inner + "}" * depth)
        doc = json.dumps({**base, key: "__SLOT__"}).replace('"__SLOT__"', nested)
    elif kind == "whole":
        doc = json.dumps(draw(JSON))
    elif kind == "deep":
        doc = draw(st.sampled_from(DEEP_DOCUMENTS))
    else:
        return draw(st.one_of(st.binary(max_size=64), st.integers(0, len(text)).map(lambda n: text[:n].encode()),
                              st.binary(min_size=1, max_size=16).map(lambda b: text.encode() + b),
                              st.just(b"\xef\xbb\xbf" + text.encode()), st.just(b"")))
    note(doc[:300])
    return doc.encode()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for the fuzz tests' examples (hypothesis runs many in one test)."""
    return tmp_path_factory.mktemp("fuzz")


@fuzz_settings(200)
@given(data=st.data())
def test_config_fuzz_with_the_real_run(pristine, scratch, data):
    """config.json fuzzed: `pyro-vae sample` succeeds, or says why in one line (exit 2); nothing in
    the run directory changes."""
    run, out = scratch / "config-run", scratch / "s.png"
    if not run.exists():
        shutil.copytree(pristine, run)
    document = data.draw(config_documents(json.loads((pristine / "config.json").read_text())))
    (run / "config.json").write_bytes(document)
    before = hashes(run)
    status, stdout, stderr = cli(["sample", str(run), "--n", "4", "--device", "cpu", "--out", str(out)])
    note(f"status {status}: {stderr}")
    event(f"sample: exit {status} {stderr.replace(str(run), 'RUN')[17:60]}".strip())
    assert status in (0, 2)
    if status == 2:
        assert_one_line(stderr)
        assert not out.exists()
    else:
        assert out.is_file() and stdout == f"samples: {out}\n"
        out.unlink()
    assert hashes(run) == before


def test_config_json_100000_deep_is_one_line(run):
    (run / "config.json").write_text("[" * 100000 + "]" * 100000)
    status, _, stderr = cli(["sample", str(run), "--n", "4", "--device", "cpu", "--out", str(run.parent / "s.png")])
    assert status == 2
    assert_one_line(stderr, f"{run}/config.json is not readable (nested too deeply)")


def test_changes_nested_a_few_hundred_deep(run):
    base = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**base, "changes": "__SLOT__"}).replace('"__SLOT__"',
                                                                                          "[" * 600 + "]" * 600))
    status, _, stderr = cli(["sample", str(run), "--n", "4", "--device", "cpu", "--out", str(run.parent / "s.png")])
    assert status == 2
    assert_one_line(stderr, "config.json")


@pytest.mark.parametrize("where", ["hidden", "z_dim", "lr", "beta", "clip_grad", "changes", "cli --hidden"])
def test_huge_integer_in_config(run, tmp_path, where):
    huge = 10**400
    if where == "cli --hidden":
        status, _, stderr = cli(["train", "--hidden", str(huge), "--out", str(tmp_path / "new"), "--epochs", "1",
                                 "--device", "cpu", "--quiet"])
        assert status == 2
        assert_one_line(stderr, "hidden")
        assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
        return
    base = json.loads((run / "config.json").read_text())
    value = [{"epoch": 1, "lr": huge}] if where == "changes" else huge
    (run / "config.json").write_text(json.dumps({**base, where: value}))
    status, _, stderr = cli(["sample", str(run), "--n", "4", "--device", "cpu", "--out", str(tmp_path / "s.png")])
    assert status == 2
    assert_one_line(stderr, "lr" if where == "changes" else where)


@pytest.mark.parametrize("path", ["builtins:print", "builtins:int"])
def test_part_path_to_a_non_part(run, tmp_path, path):
    base = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**base, "prior": path}))
    status, _, stderr = cli(["sample", str(run), "--n", "4", "--device", "cpu", "--out", str(tmp_path / "s.png")])
    assert status == 2
    assert_one_line(stderr, path)


# ---- 4. fuzzed checkpoint.pt --------------------------------------------------------------------------

DTYPES = [torch.int64, torch.int32, torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.uint8,
          torch.complex64]


def any_tensor(draw, max_numel=64):
    shape = draw(st.lists(st.integers(0, 8), max_size=3))
    numel = 1
    for n in shape:
        numel *= n
    if numel > max_numel:
        shape = [max_numel]
    return torch.zeros(shape, dtype=draw(st.sampled_from([torch.float32, *DTYPES])))


def damage_epoch(s, draw):
    s["epoch"] = draw(st.one_of(st.sampled_from(["2", "1", -5, True, False, 10**30, -10**30, 1.0, None, 0, 2, [], {}]),
                                st.integers(), st.floats()))
    return f"epoch = {s['epoch']!r}"


def damage_history(s, draw):
    orig = json.loads(s["history"])
    value = draw(st.one_of(
        JSON.map(json.dumps),
        st.sampled_from([json.dumps(orig * 2), json.dumps([]), json.dumps(orig + orig[:1]), json.dumps(orig)[:-1],
                         "[" * 100000, "[" * 100000 + "]" * 100000, "", "null"]),
        st.text(max_size=30),
        st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2)),
        st.just(torch.zeros(3)),
    ))
    s["history"] = value
    return f"history = {str(value)[:120]!r}"


def damage_config_entry(s, draw):
    saved = json.loads(s["config"])
    s["config"] = draw(st.one_of(
        st.tuples(st.sampled_from(sorted(saved)), JSON).map(lambda kv: json.dumps({**saved, kv[0]: kv[1]})),
        st.text(max_size=30), JSON, st.sampled_from(["[" * 100000, '{"a":' * 100000 + "1" + "}" * 100000])))
    return f"config = {str(s['config'])[:120]!r}"


def damage_format(s, draw):
    s["format"] = draw(JSON)
    return f"format = {s['format']!r}"


def damage_top(s, draw):
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(s)))
        del s[key]
        return f"del {key}"
    key = draw(st.one_of(st.text(max_size=10), st.integers(-5, 5)))
    s[key] = draw(st.one_of(JSON_SMALL, st.builds(lambda: torch.zeros(3))))
    return f"[{key!r}] = {str(s[key])[:80]}"


def damage_weight(s, draw):
    name = draw(st.sampled_from(sorted(s["model"])))
    weights = s["model"]
    op = draw(st.sampled_from(["nan", "dtype", "shape", "non-tensor", "delete", "extra", "stride-0", "scale"]))
    if op == "nan":
        w = weights[name].clone()
        w.view(-1)[draw(st.integers(0, w.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        weights[name] = w
    elif op == "dtype":
        weights[name] = weights[name].to(draw(st.sampled_from(DTYPES)))
    elif op == "shape":
        weights[name] = torch.zeros(draw(st.lists(st.integers(0, 9), max_size=3)))
    elif op == "non-tensor":
        weights[name] = draw(JSON_SMALL)
    elif op == "delete":
        del weights[name]
    elif op == "extra":
        weights[draw(st.text(max_size=12))] = any_tensor(draw)
    elif op == "stride-0":
        weights[name] = torch.zeros(1).expand(weights[name].shape)
    else:
        weights[name] = weights[name] * draw(st.sampled_from([1e30, -1e38, 1e-45, 0.0]))
    return f"model[{name}]: {op}"


RNG_VALUES = {
    ("numpy", "kind"): st.one_of(st.text(max_size=12), JSON_SMALL),
    ("numpy", "pos"): st.one_of(SMALL_INTS, JSON_SMALL),
    ("numpy", "has_gauss"): st.one_of(SMALL_INTS, JSON_SMALL),
    ("numpy", "gauss"): st.one_of(FUZZ_FLOATS, JSON_SMALL),
    ("python", "version"): st.one_of(SMALL_INTS, JSON_SMALL),
    ("python", "gauss_next"): st.one_of(FUZZ_FLOATS, JSON_SMALL),
}


def damage_rng(s, draw):
    rng = s["rng"]
    op = draw(st.sampled_from(["torch", "cuda", "numpy", "numpy keys", "python internal", "python element",
                               "delete", "replace"]))
    if op == "torch":
        rng["torch"] = draw(st.one_of(
            st.tuples(st.sampled_from([torch.uint8, torch.float32, torch.int64]), st.integers(0, 6000)).map(
                lambda t: torch.zeros(t[1], dtype=t[0])), JSON_SMALL))
    elif op == "cuda":
        rng["cuda"] = draw(st.one_of(JSON_SMALL, st.just([torch.zeros(16, dtype=torch.uint8)])))
    elif op == "numpy":
        part, key = draw(st.sampled_from(sorted(RNG_VALUES)))
        rng[part][key] = draw(RNG_VALUES[part, key])
        op = f"{part}[{key}] = {rng[part][key]!r}"
    elif op == "numpy keys":
        n, dtype = draw(st.sampled_from([0, 3, 623, 624, 625])), draw(st.sampled_from([torch.int64, torch.float32]))
        rng["numpy"]["keys"] = torch.full((n,), draw(st.integers(-2**31, 2**31 - 1)), dtype=torch.int64).to(dtype)
    elif op == "python internal":
        n = draw(st.sampled_from([0, 1, 624, 625, 626, 700]))
        rng["python"]["internal"] = draw(st.one_of(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n),
                                                   JSON_SMALL))
    elif op == "python element":
        internal = list(rng["python"]["internal"])
        internal[draw(st.integers(0, len(internal) - 1))] = draw(st.one_of(st.integers(0, 2**32 - 1), JSON_SMALL))
        rng["python"]["internal"] = internal
    elif op == "delete":
        part = draw(st.sampled_from(sorted(rng)))
        if isinstance(rng[part], dict) and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(rng[part])))
            del rng[part][key]
            op = f"del rng[{part}][{key}]"
        else:
            del rng[part]
            op = f"del rng[{part}]"
    else:
        part = draw(st.sampled_from(sorted(rng)))
        rng[part] = draw(JSON_SMALL)
        op = f"rng[{part}] = {rng[part]!r}"
    return f"rng: {op}"


def damage_optimizer(s, draw):
    opt = s["optimizer"]
    op = draw(st.sampled_from(["delete", "param_groups", "params", "lr", "extra state", "step", "drop state",
                               "replace"]))
    if op == "delete":
        del opt[draw(st.sampled_from(sorted(opt)))]
    elif op == "param_groups":
        opt["param_groups"] = draw(st.one_of(JSON_SMALL, st.just(opt["param_groups"] * 2), st.just([])))
    elif op == "params":
        opt["param_groups"][0]["params"] = draw(st.one_of(
            st.lists(st.integers(0, 20), max_size=10).filter(lambda p: len(p) != 8), JSON_SMALL))
    elif op == "lr":  # set_lr replaces the saved rate with config's
        opt["param_groups"][0]["lr"] = draw(JSON_SMALL)
    elif op == "extra state":
        opt["state"][draw(st.one_of(st.integers(8, 10**6), st.text(max_size=8)))] = draw(
            st.one_of(JSON_SMALL, st.builds(lambda: {"exp_avg": torch.zeros(3)})))
    elif op == "step":
        opt["state"][draw(st.integers(0, 7))]["step"] = draw(st.one_of(
            st.none(), st.booleans(), SMALL_INTS, FUZZ_FLOATS, st.text(max_size=8), st.lists(SMALL_INTS, max_size=3)))
    elif op == "drop state":
        del opt["state"][draw(st.integers(0, 7))]
    else:
        s["optimizer"] = draw(JSON_SMALL.filter(lambda v: not isinstance(v, dict)))
    return f"optimizer: {op}"


DAMAGES = [damage_epoch, damage_history, damage_config_entry, damage_format, damage_top, damage_weight,
           damage_rng, damage_optimizer]


EXAMPLES = iter(range(10**9))


@fuzz_settings(60)
@given(data=st.data())
def test_checkpoint_fuzz_with_the_real_run(pristine, pristine_state, scratch, data):
    """checkpoint.pt fuzzed: `train --resume` and `evaluate` exit 0, or 2 with one line; a failed
    resume leaves checkpoint.pt as it was, a failed evaluate the whole run directory."""
    run = scratch / f"run{next(EXAMPLES)}"
    shutil.copytree(pristine, run)  # every example starts from the real run
    state = copy.deepcopy(pristine_state)
    damage = data.draw(st.sampled_from(DAMAGES + ["truncate", "append"]))
    if isinstance(damage, str):
        blob = (pristine / "checkpoint.pt").read_bytes()
        if damage == "truncate":
            blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
        else:
            blob += data.draw(st.binary(min_size=1, max_size=64))
        (run / "checkpoint.pt").write_bytes(blob)
        note(damage)
    else:
        note(damage(state, data.draw))
        save_state(run, state)
    event(f"damage: {getattr(damage, '__name__', damage)}")
    before = hashes(run)

    status, _, stderr = cli(evaluate_argv(run))
    note(f"evaluate: {status} {stderr}")
    event(f"evaluate: exit {status} {stderr.replace(str(run), 'RUN')[17:60]}".strip())
    assert status in (0, 2)
    if status == 2:
        assert_one_line(stderr)
        assert hashes(run) == before
    else:
        assert hashes(run, skip=("eval.json",)) == {k: v for k, v in before.items() if k != "eval.json"}
    before = hashes(run, skip=(LOCK_FILE,))

    status, _, stderr = cli(resume_argv(run))
    note(f"resume: {status} {stderr}")
    event(f"resume: exit {status} {stderr.replace(str(run), 'RUN')[17:60]}".strip())
    assert status in (0, 2)
    assert no_temporaries(run)
    if status == 2:
        assert_one_line(stderr)
        assert sha256(run / "checkpoint.pt") == before["checkpoint.pt"]
        assert set(hashes(run, skip=(LOCK_FILE,))) == set(before)
    else:
        assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 3
    shutil.rmtree(run)


# -- the bugs the checkpoint fuzz leaves out, one by one ---------------------------------------------------

def resume_fails_in_one_line(run, *needles):
    """`train --resume` of `run` exits 2 with one line, checkpoint.pt unchanged."""
    before = sha256(run / "checkpoint.pt")
    status, _, stderr = cli(resume_argv(run))
    assert status == 2, stderr
    assert_one_line(stderr, f"{run}/checkpoint.pt", *needles)
    assert sha256(run / "checkpoint.pt") == before and no_temporaries(run)


def test_nan_in_an_adam_moment_is_refused_before_training(run, pristine_state):
    state = copy.deepcopy(pristine_state)
    state["optimizer"]["state"][0]["exp_avg"].view(-1)[0] = float("nan")
    save_state(run, state)
    resume_fails_in_one_line(run, "damaged optimizer state", "finite")


def test_checkpoint_with_a_5000_digit_integer_is_refused_as_a_pickle(run, pristine_state):
    state = copy.deepcopy(pristine_state)
    state["epoch"] = 10**5000
    save_state(run, state)
    resume_fails_in_one_line(run, "refused")  # (its words, "a pickled Python object", overstate it: an int)


RNG_OVERFLOWS = {
    "python internal -1": lambda s: s["rng"]["python"]["internal"].__setitem__(0, -1),
    "python internal 2**70": lambda s: s["rng"]["python"]["internal"].__setitem__(0, 2**70),
    "numpy pos 2**40": lambda s: s["rng"]["numpy"].__setitem__("pos", 2**40),
    "numpy pos 10**30": lambda s: s["rng"]["numpy"].__setitem__("pos", 10**30),
    "numpy has_gauss 10**30": lambda s: s["rng"]["numpy"].__setitem__("has_gauss", 10**30),
}


@pytest.mark.parametrize("damage", sorted(RNG_OVERFLOWS))
def test_resume_with_rng_integers_out_of_range(run, pristine_state, damage):
    state = copy.deepcopy(pristine_state)
    RNG_OVERFLOWS[damage](state)
    save_state(run, state)
    resume_fails_in_one_line(run, "damaged random generator state")


OPTIMIZER_DAMAGES = {  # damage: the exception `train --resume` ends with
    "state is a list": (lambda o: o.__setitem__("state", [1, 2]), AttributeError),
    "state is a string": (lambda o: o.__setitem__("state", "abc"), AttributeError),
    "exp_avg of another shape": (lambda o: o["state"][0].__setitem__("exp_avg", torch.zeros(3)), RuntimeError),
    "exp_avg missing": (lambda o: o["state"][0].pop("exp_avg"), KeyError),
    "exp_avg a string": (lambda o: o["state"][0].__setitem__("exp_avg", "x"), AttributeError),
    "betas a number": (lambda o: o["param_groups"][0].__setitem__("betas", 3), TypeError),
    "eps a string": (lambda o: o["param_groups"][0].__setitem__("eps", "x"), TypeError),
    "amsgrad switched on": (lambda o: o["param_groups"][0].__setitem__("amsgrad", True), KeyError),
}


@pytest.mark.parametrize("damage", sorted(OPTIMIZER_DAMAGES))
def test_resume_with_damaged_optimizer_contents(run, pristine_state, damage, request):
    mutate, raised = OPTIMIZER_DAMAGES[damage]
    state = copy.deepcopy(pristine_state)
    mutate(state["optimizer"])
    save_state(run, state)
    resume_fails_in_one_line(run, "optimizer")


def test_resume_with_history_without_metrics(run, pristine_state):
    state = copy.deepcopy(pristine_state)
    state["history"] = json.dumps([{"epoch": 1}])
    save_state(run, state)
    resume_fails_in_one_line(run, "history")


def nest_in_checkpoint(path, state, depth):
    """Save `state` with state["optimizer"]["deep"] a list nested `depth` deep, written into the
    pickle directly (Python's pickler would overflow the stack); torch's weights_only unpickler is
    iterative and loads it."""
    state = copy.deepcopy(state)
    state["optimizer"]["deep"] = "PLACEHOLDER_DEEP"
    torch.save(state, path)
    with zipfile.ZipFile(path) as z:
        records = [(info, z.read(info.filename)) for info in z.infolist()]
    placeholder = b"X" + len("PLACEHOLDER_DEEP").to_bytes(4, "little") + b"PLACEHOLDER_DEEP"  # BINUNICODE
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, blob in records:
            if info.filename.endswith("/data.pkl"):
                assert blob.count(placeholder) == 1
                blob = blob.replace(placeholder, b"]" * depth + b"a" * (depth - 1))  # EMPTY_LIST..., APPEND...
            z.writestr(info, blob)


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_checkpoint_nested_100000_deep(run, pristine_state, command):
    nest_in_checkpoint(run / "checkpoint.pt", pristine_state, 100000)
    deep, depth = torch.load(run / "checkpoint.pt", weights_only=True)["optimizer"]["deep"], 0
    while deep:
        deep, depth = deep[0], depth + 1
    assert depth == 100000 - 1  # the innermost list is empty
    before = hashes(run, skip=(LOCK_FILE,))
    status, _, stderr = cli(evaluate_argv(run) if command == "evaluate" else resume_argv(run))
    assert status == 2
    assert_one_line(stderr, f"{run}/checkpoint.pt")
    assert hashes(run, skip=(LOCK_FILE,)) == before
