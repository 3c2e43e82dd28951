"""`pyro-vae compare`: a grid of runs over variants and seeds, resumable, shardable, summarized
with Student-t intervals; each claim is tried the way a user would break it."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

import pyro_vae
from pyro_vae import UserError
from pyro_vae.cli import main
from pyro_vae.runs.compare import grid, read_experiment, t_interval
from run_helpers import hashes

TINY = dict(dataset="digits", epochs=2, train_size=64, batch_size=32, z_dim=2, hidden=16)
EVAL = dict(iw_samples=5, examples=40, fidelity_samples=3)


def cells_of(out):
    return sorted(p.name for p in out.iterdir() if (p / "config.json").is_file())


def test_interval_against_a_hand_computed_t_interval():
    mean, half, n = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # t(0.975, 4) = 2.7764451051977987 (tables); sd = sqrt(2.5); half = t * sd / sqrt(5)
    assert (mean, n) == (3.0, 5) and half == pytest.approx(2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5), rel=1e-12)
    mean, half, n = t_interval([-0.5, 0.5])
    assert half == pytest.approx(12.706204736174698 * math.sqrt(0.5) / math.sqrt(2), rel=1e-12)
    assert math.isnan(t_interval([4.2])[1]) and t_interval([4.2])[0] == 4.2


def test_two_variants_two_seeds_end_to_end_then_nothing_to_train(tmp_path):
    out = tmp_path / "exp"
    summary = pyro_vae.compare(out, vary={"model": ["cvae1", "cvae2"]}, seeds=2, shared=TINY, evaluation=EVAL,
                               progress=False)
    assert cells_of(out) == ["cvae1-seed0", "cvae1-seed1", "cvae2-seed0", "cvae2-seed1"]
    for name in ("summary.md", "summary.csv", "summary.json", "curves.png", "intervals.png", "samples.png",
                 "experiment.toml"):
        assert (out / name).is_file(), name
    # the summary's numbers are the intervals of the runs' own eval.json
    values = [json.loads((out / f"cvae2-seed{s}" / "eval.json").read_text())["test_log_likelihood"] for s in (0, 1)]
    reported = summary["variants"]["cvae2"]["metrics"]["test_log_likelihood"]
    assert (reported["mean"], reported["half_width"]) == pytest.approx(t_interval(values)[:2])
    ref = [json.loads((out / f"cvae1-seed{s}" / "eval.json").read_text())["test_log_likelihood"] for s in (0, 1)]
    diff = summary["variants"]["cvae2"]["differences"]["test_log_likelihood"]
    assert diff["mean"] == pytest.approx(sum(values) / 2 - sum(ref) / 2)
    assert diff["holds"] == (abs(diff["mean"]) > diff["half_width"])
    text = (out / "summary.md").read_text()
    assert "pyro-vae compare --summarize" in text and "## log p(x|y)" in text and "(reference)" in text
    # a second invocation trains nothing and changes no run
    before = {c: hashes(out / c) for c in cells_of(out)}
    pyro_vae.compare(out, vary={"model": ["cvae1", "cvae2"]}, seeds=2, shared=TINY, evaluation=EVAL, progress=False)
    assert {c: hashes(out / c) for c in cells_of(out)} == before
    # another grid is not mixed into this experiment directory
    with pytest.raises(UserError, match="holds another experiment"):
        pyro_vae.compare(out, vary={"model": ["cvae1", "cvae4"]}, seeds=2, shared=TINY, evaluation=EVAL, progress=False)
    # nor one whose shared settings differ, even where it adds a variant
    with pytest.raises(UserError, match="holds another experiment"):
        pyro_vae.compare(out, vary={"model": ["cvae1", "cvae2", "cvae4"]}, seeds=2, shared={**TINY, "z_dim": 3},
                         evaluation=EVAL, progress=False)
    # the same grid listed in another order is the same experiment: nothing trains, the file stands
    grid_file = (out / "experiment.toml").read_bytes()
    pyro_vae.compare(out, vary={"model": ["cvae2", "cvae1"]}, seeds=[1, 0], shared=TINY, evaluation=EVAL,
                     progress=False)
    assert (out / "experiment.toml").read_bytes() == grid_file
    assert {c: hashes(out / c) for c in cells_of(out)} == before


def test_a_grid_extends_by_a_variant_and_a_seed_keeping_finished_cells(tmp_path, capsys):
    out = tmp_path / "exp"
    pyro_vae.compare(out, vary={"model": ["cvae1", "cvae2"]}, seeds=1, shared=TINY, evaluation=EVAL, progress=False)
    before = {c: hashes(out / c) for c in cells_of(out)}
    summary = pyro_vae.compare(out, vary={"model": ["cvae1", "cvae2", "cvae4"]}, seeds=2, shared=TINY,
                               evaluation=EVAL)
    assert "extended by model cvae4; seeds 1" in capsys.readouterr().out
    assert cells_of(out) == ["cvae1-seed0", "cvae1-seed1", "cvae2-seed0", "cvae2-seed1", "cvae4-seed0", "cvae4-seed1"]
    assert {c: hashes(out / c) for c in before} == before  # the finished cells were not retrained
    assert summary["variants"]["cvae4"]["seeds"] == [0, 1]
    # the recorded grid is the extended one: the file alone reruns (and finds) all of it
    shared, vary, seeds, _ = read_experiment(out / "experiment.toml")
    assert vary == {"model": ["cvae1", "cvae2", "cvae4"]} and seeds == [0, 1]


def test_kinds_are_not_ranked_together_and_a_missing_metric_is_named(tmp_path):
    out = tmp_path / "exp"
    pyro_vae.compare(out, vary={"model": ["cvae1", "cvae3"]}, seeds=[0, 1], shared=TINY, evaluation=EVAL,
                     progress=False)
    (out / "cvae3-seed1" / "eval.json").unlink()
    summary = pyro_vae.summarize(out, progress=False)
    assert summary["variants"]["cvae3"]["kind"] == "log p(y|x)" and not summary["variants"]["cvae3"]["differences"]
    text = (out / "summary.md").read_text()
    assert "not comparable" in text and "## log p(y|x)" in text
    assert "cvae3-seed1: not evaluated (no eval.json)" in text
    assert summary["variants"]["cvae3"]["seeds"] == [0]


def test_shards_cover_the_grid_exactly_once(tmp_path):
    out = tmp_path / "exp"
    vary = {"model": ["vae", "cvae2"], "beta": [1.0, 0.5]}
    first = pyro_vae.compare(out, vary=vary, seeds=[0], shared=TINY, evaluation=EVAL, shard=(1, 2), progress=False)
    after_first = {c: hashes(out / c) for c in cells_of(out)}
    assert len(after_first) == 2 and first
    pyro_vae.compare(out, vary=vary, seeds=[0], shared=TINY, evaluation=EVAL, shard=(2, 2), progress=False)
    names = cells_of(out)
    expected = sorted(f"{name}-seed{seed}" for name, seed, _ in grid(vary, [0]))
    assert names == expected and len(set(names)) == 4
    assert {c: hashes(out / c) for c in after_first} == after_first  # shard 2 did not touch shard 1's cells
    with pytest.raises(ValueError, match="shard is i/n"):
        pyro_vae.compare(out, vary=vary, seeds=[0], shared=TINY, evaluation=EVAL, shard=(3, 2), progress=False)


def test_a_killed_comparison_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "exp"
    argv = ["compare", "--models", "vae,cvae2", "--seeds", "1", "--dataset", "digits", "--epochs", "400",
            "--train-size", "64", "--batch-size", "32", "--z-dim", "2", "--hidden", "8", "--iw-samples", "5",
            "--examples", "20", "--fidelity-samples", "2", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pyro_vae", *argv], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "vae-seed0" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: as a crash or an OOM kill
    proc.wait()
    done_before = metrics.read_text().splitlines()
    assert 3 <= len(done_before) < 400
    assert main(argv) == 0
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, 401))
    kept = [json.loads(line) for line in done_before]
    assert lines[:len(kept) - 1] == kept[:len(kept) - 1]  # the finished epochs were kept, not retrained
    assert (out / "cvae2-seed0" / "eval.json").is_file()


def test_experiment_file_and_cli(tmp_path, capsys):
    spec = tmp_path / "mine.toml"
    spec.write_text('seeds = [0, 1]\n[shared]\ndataset = "digits"\nepochs = 1\ntrain_size = 64\nz_dim = 2\nhidden = 8\n'
                    '[vary]\nmodel = ["vae", "cvae2"]\n[evaluate]\niw_samples = 5\nexamples = 20\nfidelity_samples = 2\n')
    assert main(["compare", str(spec), "--quiet"]) == 0
    out = tmp_path / "mine"
    assert cells_of(out) == ["cvae2-seed0", "cvae2-seed1", "vae-seed0", "vae-seed1"]
    assert read_experiment(out / "experiment.toml") == read_experiment(spec)
    assert main(["compare", "--summarize", str(out), "--reference", "cvae2", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["reference"] == "cvae2"
    capsys.readouterr()
    for argv, needle in [
        (["compare", "--models", "vae", "--out", str(tmp_path / "x")], "nothing varies"),
        (["compare", "--models", "vae,cvae1", "--bogus", "1"], "unrecognized arguments"),
        (["compare", "--models", "vae,cvae9", "--out", str(tmp_path / "x")], "unknown model 'cvae9'"),
        (["compare", "--models", "vae,vae", "--out", str(tmp_path / "x")], "lists a value twice"),
        (["compare", str(spec), "--models", "vae,cvae1"], "not both"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, (argv, err)
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = [0\n")
    assert main(["compare", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_a_parts_own_arguments_vary_by_json_and_survive_the_experiment_file(tmp_path, cli_error):
    out = tmp_path / "pseudo"
    argv = ["compare", "--models", "vae", "--seeds", "1", "--prior", "vamp", "--part-args", '{"prior": {"pseudo_inputs": 3}}',
            "--part-args", '{"prior": {"pseudo_inputs": 6}}', "--dataset", "digits", "--epochs", "1", "--train-size", "64",
            "--z-dim", "2", "--hidden", "8", "--iw-samples", "3", "--examples", "20", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert cells_of(out) == ["prior.pseudo_inputs=3-seed0", "prior.pseudo_inputs=6-seed0"]
    for cell, k in [("prior.pseudo_inputs=3-seed0", 3), ("prior.pseudo_inputs=6-seed0", 6)]:
        assert json.loads((out / cell / "config.json").read_text())["part_args"] == {"prior": {"pseudo_inputs": k}}
    assert read_experiment(out / "experiment.toml")[1]["part_args"] == [{"prior": {"pseudo_inputs": 3}},
                                                                      {"prior": {"pseudo_inputs": 6}}]
    before = hashes(out)
    assert main(["compare", str(out / "experiment.toml"), "--quiet"]) == 0  # the file reruns the same grid: nothing to do
    assert {k: v for k, v in hashes(out).items() if "summary" not in k and not k.endswith(".png")} == \
        {k: v for k, v in before.items() if "summary" not in k and not k.endswith(".png")}
    cli_error(["compare", "--models", "vae,cvae1", "--part-args", "{prior", "--out", str(tmp_path / "x")], "JSON object")


def test_parallel_jobs_train_every_cell(tmp_path):
    out = tmp_path / "exp"
    summary = pyro_vae.compare(out, vary={"model": ["vae", "cvae2"]}, seeds=1, shared={**TINY, "epochs": 1},
                               evaluation=EVAL, jobs=2, threads=2, progress=False)
    assert cells_of(out) == ["cvae2-seed0", "vae-seed0"] and "failed" not in summary
    for cell in cells_of(out):
        assert json.loads((out / cell / "eval.json").read_text())["examples"] == 40


@pytest.mark.parametrize("evaluate", ["iw_samples = -5", 'iw_samples = "many"', "examples = 0", "fidelity_samples = 2.5",
                                      "iw_samples = true", "bogus = 1"])
def test_bad_evaluation_settings_are_refused_before_any_cell_trains(tmp_path, evaluate):
    """An experiment file's [evaluate] table used to be read only once each cell had trained: every
    cell then failed its evaluation. Now the grid is refused in one line and nothing is written."""
    spec = tmp_path / "e.toml"
    spec.write_text(f"seeds = 1\n[shared]\nepochs = 1\n[evaluate]\n{evaluate}\n[vary]\nmodel = ['vae', 'cvae1']\n")
    key = evaluate.split(" =")[0]
    with pytest.raises(UserError, match=key) as e:
        pyro_vae.compare(tmp_path / "c", experiment=spec, progress=False)
    assert str(spec) in str(e.value)
    value = json.loads(evaluate.split("= ")[1].replace("'", '"'))
    with pytest.raises(UserError, match=f"compare: .*{key}"):
        pyro_vae.compare(tmp_path / "c", vary={"model": ["vae", "cvae1"]}, seeds=1, shared=TINY,
                         evaluation={key: value}, progress=False)
    assert not (tmp_path / "c").exists()


def test_summarizing_a_folder_of_runs_never_writes_over_a_users_files(tmp_path):
    """`--summarize DIR` also reads a folder of runs made by hand; there summary.md or curves.png may be
    the user's own. Without experiment.toml or an earlier summary.json of ours, they are kept and the
    summary refused in one line; once the folder holds our summary, summarizing again replaces it."""
    pyro_vae.train(out=tmp_path / "runs" / "vae-seed0", progress=False, **{**TINY, "epochs": 1})
    mine = tmp_path / "runs" / "curves.png"
    mine.write_bytes(b"my figure")
    before = hashes(tmp_path / "runs")
    with pytest.raises(UserError, match="holds curves.png, not written by pyro-vae compare"):
        pyro_vae.summarize(tmp_path / "runs", progress=False)
    assert hashes(tmp_path / "runs") == before
    mine.unlink()
    pyro_vae.summarize(tmp_path / "runs", progress=False)
    assert (tmp_path / "runs" / "summary.md").is_file()
    pyro_vae.summarize(tmp_path / "runs", progress=False)  # its own files: replaced
