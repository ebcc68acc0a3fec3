"""examples/beats_continue/domain_table.py: the domain-adaptation table from the loops of two runs."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "beats_continue" / "domain_table.py"


def load_script():
    spec = importlib.util.spec_from_file_location("domain_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_loop(folder: Path, rows: dict):
    budgets = {b: {"rows": {name: {"runs": runs} for name, runs in by_name.items()}} for b, by_name in rows.items()}
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(
        {"evaluation": {"metric": "accuracy", "split": "test", "budgets": budgets}}))


def test_paired_differences_per_loop_seed(tmp_path):
    # loop k: continued = scratch + 0.1 * k, with two fine-tuning seeds per loop
    for k in (1, 2, 3):
        common = {"random": [0.1, 0.2], "fbank": [0.3, 0.3], "start": [0.4, 0.5]}
        write_loop(tmp_path / "continued" / f"seed{k}", {"10": {**common, "iter1": [0.5 + 0.1 * k, 0.6 + 0.1 * k]}})
        write_loop(tmp_path / "scratch" / f"seed{k}", {"10": {**common, "iter1": [0.5, 0.6]}})
    load_script().main([str(tmp_path)])
    result = json.loads((tmp_path / "domain_adaptation.json").read_text())
    assert result["loops"] == 3
    block = result["budgets"]["10"]
    diff = block["paired"]["source model continued on the target pool - from scratch on the target pool"]
    assert diff["runs"] == pytest.approx([0.1, 0.2, 0.3]) and diff["mean"] == pytest.approx(0.2)
    assert diff["low"] < 0.2 < diff["high"]
    assert block["rows"]["source model, no continuation"]["runs"] == [0.4, 0.5] * 3
    assert "10 labels per class" in (tmp_path / "domain_adaptation.md").read_text()


def test_missing_run_names_the_file(tmp_path):
    write_loop(tmp_path / "continued", {"all": {"random": [0.1], "fbank": [0.2], "start": [0.3], "iter1": [0.4]}})
    with pytest.raises(SystemExit, match="scratch/summary.json"):
        load_script().main([str(tmp_path)])
