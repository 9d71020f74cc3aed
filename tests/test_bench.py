"""bench.py: the FLOP count of known layers, and the whole benchmark on a tiny model."""
import json, os, subprocess, sys

import pytest
import torch
import torch.nn as nn

import bench
import ddpm
import pixelcnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flops_of_known_layers():
    conv, lin = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(5, 7)
    assert bench.forward_flops(conv, lambda: conv(torch.zeros(2, 3, 10, 10))) == 2 * (2 * 8 * 10 * 10) * 3 * 9
    assert bench.forward_flops(lin, lambda: lin(torch.zeros(4, 5))) == 2 * 4 * 7 * 5
    grouped = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    assert bench.forward_flops(grouped, lambda: grouped(torch.zeros(1, 4, 6, 6))) == 2 * (4 * 36) * 1 * 9
    att = ddpm.Attention(8)
    x = torch.zeros(1, 8, 4, 4)
    qkv_proj = 2 * (16 * 24 * 8 + 16 * 8 * 8)               # the 1x1 convs
    assert bench.forward_flops(att, lambda: att(x)) == qkv_proj + 2 * 2 * 16 ** 2 * 8
    causal = pixelcnn.Attention(cin=1, width=4, colours=1, size=3)        # keys, values made before
    h, where = torch.zeros(2, 4, 3, 3), torch.arange(9)
    k, v = causal.keys_values(torch.zeros(2, 1, 3, 3), h, where)
    macs = 2 * 9 * 16 * 4 + 9 * 16 * 2 + 2 * 9 * 4 * 4                  # query conv, its position, output
    assert bench.forward_flops(causal, lambda: causal(h, where, k, v)) == 2 * (macs + 2 * 81 * (16 + 4))


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--quick", "--models",
                        "pixelcnn-attention", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads((tmp_path / "bench.json").read_text())["rows"]["pixelcnn-attention"]
    assert row["fp32"] > 0 and row["bf16"] > 0 and row["ddp"] > 0 and row["flops"] > 0 and row["naive_per_s"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert "| pixelcnn-attention |" in md and "pixelcnn-attention: the naive sampler" in md


def test_interleaved_ab_alternates_and_takes_medians(monkeypatch):
    """The A/B timer calls a and b in turn, leaves out the warm-up call of each and returns each
    one's median, read on a fake clock that each step moves by a known amount (no real timing)."""
    clock, calls = [0.0], []
    durations = {"a": iter([100, 3, 1, 2, 50, 2]), "b": iter([100, 6, 7, 5, 6, 90])}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])

    def step(name):
        def run():
            calls.append(name)
            clock[0] += next(durations[name])
        return run

    assert bench.interleaved_ab(step("a"), step("b"), reps=5) == (2, 6)
    assert calls == ["a", "b"] * 6
    durations.update(a=iter([9, 1, 4, 2]), b=iter([9, 8, 7, 6]), c=iter([9, 5, 3, 4]))
    calls.clear()
    assert bench.interleaved_ab(step("a"), step("b"), step("c"), reps=3) == (2, 7, 4)
    assert calls == ["a", "b", "c"] * 4


F, B = ("fp32", "nchw"), ("fp32", "channels-last")


@pytest.mark.parametrize("times,native,expected", [
    # bf16 is 1.25x faster only in channels-last: the layout decides the precision
    ({F: 1.0, B: 1.0, ("bf16", "nchw"): 1.0, ("bf16", "channels-last"): 0.8}, True,
     ("bf16", "channels-last")),
    ({F: 1.0, B: 0.5, ("bf16", "nchw"): 0.8, ("bf16", "channels-last"): 0.9}, True,
     ("fp32", "channels-last")),
    ({F: 1.0, B: 1.0, ("bf16", "nchw"): 0.5, ("bf16", "channels-last"): 0.5}, False,
     ("fp32", "nchw")),                                             # not native: never bf16
    ({F: 1.0, B: 1.0, ("bf16", "nchw"): 1 / 1.1, ("bf16", "channels-last"): 1.0}, True,
     ("bf16", "nchw")),                                             # exactly the 1.1x margin
    ({F: 1.0, B: 1.0, ("bf16", "nchw"): 0.95, ("bf16", "channels-last"): 1.0}, True,
     ("fp32", "nchw")),
    ({F: 1.0, B: 1 / 1.05, ("bf16", "nchw"): 2.0, ("bf16", "channels-last"): 2.0}, True,
     ("fp32", "channels-last")),                                    # exactly the 1.05x margin
    ({F: 1.0, B: 0.97, ("bf16", "nchw"): 2.0, ("bf16", "channels-last"): 2.0}, True,
     ("fp32", "nchw")),
])
def test_recommended_flags_take_the_fastest_way_past_its_margin(times, native, expected):
    """bench.py --recommend's rule on known times: bf16 (only where native) against fp32, each
    in its faster layout, with a 1.1x margin; then channels-last in that precision with 1.05x."""
    assert bench.recommend_flags(times, native) == expected


def test_recommend_times_each_network_in_every_way_and_names_the_flags(tmp_path):
    bench.main(["--recommend", "--quick", "--all-precisions", "--models", "vae", "ldm",
                "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "recommend.json").read_text())["rows"]
    assert [r["script"] for r in rows] == ["vae", "ldm"]
    for r in rows:
        assert all(r[f"{p}_{f}_s"] > 0 for p in ("fp32", "bf16") for f in ("nchw", "channels-last"))
        assert r["flags"].startswith("--precision ") and "--memory-format " in r["flags"]
    assert "| vae.py | 128 |" in (tmp_path / "recommend.md").read_text()


def test_against_alternates_sides_and_takes_the_median_ratio(tmp_path, monkeypatch):
    """--against runs here, there, there, here, here, ... and reports each side's median and
    the median of the rounds' ratios, from known rates (the training runs themselves faked)."""
    other = tmp_path / "other"
    other.mkdir()
    for m in ("ddpm", "vae", "pixelcnn", "ldm"):
        (other / f"{m}.py").write_text("")
    calls = []
    rates = {"here": iter([10.0, 12.0, 30.0]), "there": iter([5.0, 8.0, 10.0])}

    def fake_run(args, name, out, precision, procs, root=bench.HERE, threads=None, cpu=None):
        side = "here" if root == bench.HERE else "there"
        assert root in (bench.HERE, str(other)) and procs == 1
        calls.append(side)
        return next(rates[side]), 0.0
    monkeypatch.setattr(bench, "train_run", fake_run)
    bench.main(["--against", str(other), "--models", "vae", "--no-bf16", "--rounds", "3",
                "--out", str(tmp_path / "out")])
    assert calls == ["here", "there", "there", "here", "here", "there"]
    row = json.loads((tmp_path / "out" / "against.json").read_text())["rows"][0]
    assert row["ratio"] == 2.0 and row["here"] == [10.0, 12.0, 30.0]    # ratios 2, 1.5, 3
    assert abs(row["geometric_mean"] - 9 ** (1 / 3)) < 1e-12                # (2 x 1.5 x 3)^(1/3)
    assert "| vae | fp32 | 12 | 8 | 2.000 (1.500 - 3.000) | 2.080 |" in (tmp_path / "out" / "against.md").read_text()


def test_against_a_directory_without_the_scripts_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--against", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "no checkout of this repository" in err and "git worktree add" in err
    assert len(err.strip().splitlines()) == 1


def test_against_together_runs_both_sides_at_once_on_one_thread_each(tmp_path, monkeypatch):
    """--together: in every round both runs are alive at the same moment (a barrier that only
    two concurrent runs pass), each with one thread on its own core, the cores swapped between
    rounds, and each side's rate lands on its own side."""
    import threading
    other = tmp_path / "other"
    other.mkdir()
    (other / "vae.py").write_text("")
    barrier, seen = threading.Barrier(2, timeout=10), []

    def fake_run(args, name, out, precision, procs, root=bench.HERE, threads=None, cpu=None):
        seen.append((threads, cpu, root == bench.HERE))
        barrier.wait()                       # BrokenBarrierError if the other side is not running
        return (20.0 if root == bench.HERE else 10.0), 0.0
    monkeypatch.setattr(bench, "train_run", fake_run)
    bench.main(["--against", str(other), "--together", "--models", "vae", "--no-bf16", "--rounds", "2",
                "--out", str(tmp_path / "out")])
    row = json.loads((tmp_path / "out" / "against.json").read_text())["rows"][0]
    assert row["here"] == [20.0, 20.0] and row["ratio"] == 2.0
    assert sorted(seen) == [(1, 0, False), (1, 0, True), (1, 1, False), (1, 1, True)]   # cores swapped
