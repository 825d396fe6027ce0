from typer.testing import CliRunner

from rtgen.bench.ssm import Row, format_targets, targets
from rtgen.cli import app


def test_bench_ssm_prints_a_table_with_the_machine():
    r = CliRunner().invoke(app, ["bench", "ssm", "--length", "128", "--length", "256", "--width", "32",
                                 "--only", "rtgen fast", "--only", "sequential"])
    assert r.exit_code == 0, r.output
    assert "machine:" in r.output and "CPU" in r.output
    lines = [line for line in r.output.splitlines() if "selective scan" in line and line.strip()[0].isdigit()]
    assert len(lines) == 4  # two implementations x two lengths
    assert "targets" in r.output


def test_targets_are_ratios_of_the_same_run():
    rows = [Row(16384, 64, "selective scan, sequential ref", 1, 3000.0), Row(16384, 64, "selective scan, rtgen fast", 1, 100.0),
            Row(16384, 64, "Mamba block, mambapy", 1, 900.0), Row(16384, 64, "Mamba block, rtgen", 1, 300.0),
            Row(65536, 64, "Mamba block, rtgen", 1, 1500.0)]
    t = {what: (v, met) for what, v, _, met in targets(rows)}
    assert t["fast scan speed-up over sequential (L 16384)"] == (30.0, True)
    assert t["Mamba block speed-up over mambapy (L 16384)"] == (3.0, False)  # goal >= 8x
    assert t["Mamba block, rtgen: time(65536) / time(16384)"] == (5.0, False)
    assert "NOT met" in format_targets(targets(rows))


def test_bench_rows_report_rates_against_the_measured_peaks():
    from rtgen.bench.ssm import Rows, _rates, format_table

    rows = Rows([Row(16384, 64, "selective scan, rtgen fused", 10.0, 40.0), Row(65536, 64, "selective scan, rtgen fused", 40.0, 168.0),
                 Row(16384, 64, "Mamba block, rtgen", 1, 100.0), Row(16384, 64, "Mamba block, mambapy", 1, 900.0)])
    rows.peaks = {"fp32 matmul GFLOP/s": 100.0, "stream copy GB/s": 30.0}
    for r in rows:
        _rates(r)
    assert rows[0].gflops > 0 and rows[0].gbs > 0
    t = {what: (v, met) for what, v, _, met in targets(rows)}
    assert t["selective scan, rtgen fused: time(65536) / time(16384)"] == (4.2, True)
    v, met = t["fused scan, % of fp32 matmul peak (L 16384)"]
    assert abs(v - rows[0].gflops) < 1e-9 and met == (v >= 15)
    assert t["Mamba block speed-up over mambapy (L 16384)"] == (9.0, True)
    table = format_table(rows)
    assert "measured peaks" in table and "9.00x faster than mambapy" in table and "t(65536)/t(16384) = 4.20" in table
