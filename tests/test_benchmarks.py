"""Smoke test of the benchmark scripts: they run end to end on the smallest setting
(192 atoms, --quick, the analytic toy model) and write JSON + Markdown with the expected
keys. No timing assertions: timings belong in bench-out, not in tests."""

from __future__ import annotations

import json

import pytest

from ipi_ncforces.benchmarks.cli import main
from ipi_ncforces.models.io import save_model
from ipi_ncforces.models.pair_toy import PairToyModel


@pytest.mark.slow
def test_quick_bench_writes_json_and_markdown(tmp_path, monkeypatch):
    model = save_model(PairToyModel(), tmp_path / "toy.pt")
    out = tmp_path / "bench"
    monkeypatch.chdir(tmp_path)  # a relative --out (as the default bench-out) must reach i-PI's workdir intact
    assert main(["--quick", "--out", "bench", "--model", str(model)]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["model"]["model_type"] == "pair_toy"
    assert results["model"]["source"] == "--model"
    assert {"machine", "device", "dtype", "cost", "scaling", "md", "overhead", "pimd"} <= set(results)

    size = results["cost"]["sizes"][0]
    assert size["n_atoms"] == 192
    assert {"evaluator_direct", "evaluator_conservative", "bare_direct", "neighbour_list"} <= set(size["times"])
    assert size["F_evaluator"]["median"] > 0
    assert results["cost"]["profile"]["direct"]  # torch.profiler rows present

    md = results["md"]["sizes"][0]
    assert {"conservative", "direct", "mts2"} <= set(md["variants"])
    assert md["variants"]["mts2"]["steps_per_s"] > 0 and md["variants"]["direct"]["ns_per_day"] > 0
    assert "mts2_vs_direct" in md["ratios"] and "mts2_vs_conservative" in md["ratios"]

    assert set(results["overhead"]["ms"]) == {"bare", "evaluator", "ffdirect", "socket"}
    assert results["pimd"]["speedup_socket"] > 0

    text = (out / "results.md").read_text()
    for heading in ("Cost of conservation", "Cost growth", "i-PI MD throughput", "Serving overhead", "PIMD"):
        assert heading in text


def test_bad_options_give_one_line_errors(capsys):
    assert main(["--only", "nonsense"]) == 2
    assert "--only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--sizes", "100"])
    assert "sizes must be among" in capsys.readouterr().err
