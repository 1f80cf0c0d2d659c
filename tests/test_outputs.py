"""What a run leaves for a reader: summary.md rounded to each number's precision, the one-screen digest
printed at the end, and run.log holding what the run printed."""
import math
import re
import sys

from maia_adapt.reporting.summary import end_of_run_text, format_value, summary_markdown
from maia_adapt.runtime.runlog import tee_output


def test_a_value_is_rounded_to_its_interval_and_missing_is_a_dash():
    # half-width 0.025: two significant digits of it are the third decimal
    assert format_value(0.123456789, [0.1, 0.15]) == "0.123 (95% CI 0.100 to 0.150)"
    assert format_value(12.3456, [2.0, 22.0]) == "12 (95% CI 2 to 22)"
    assert format_value(0.5123, [0.5101, 0.5149]) == "0.5123 (95% CI 0.5101 to 0.5149)"
    assert format_value(0.30000000000000004) == "0.3"
    assert format_value(4.179592923690507) == "4.18"
    assert format_value(None) == "-" and format_value(math.nan) == "-" and format_value(0.2, None) == "0.2"
    assert format_value(0.2, [None, None]) == "0.2"
    assert format_value(7) == "7" and format_value(True) == "True" and format_value("a/b.safetensors") == "a/b.safetensors"
    assert format_value([0.11111, None], [[0.1, 0.12], None]) == "[0.111 (95% CI 0.100 to 0.120), -]"


def test_summary_md_has_no_none_and_no_long_floats():
    summary = {"top1": 0.4637281947261663, "top1_ci95": [0.4507109004739336, 0.4769585253456221],
               "skill_gap_high": None, "skill_gap_high_ci95": None, "kl": 4.179592923690507,
               "effect_by_bucket": [0.0123456, math.nan], "effect_by_bucket_ci": [[0.01, 0.015], [None, None]],
               "positions": 2000, "model": "outputs/train/model.safetensors"}
    md = summary_markdown("train (default)", summary)
    assert md.startswith("# train (default)\n")
    assert "None" not in md and "nan" not in md.lower() and not re.search(r"\d\.\d{5,}", md)
    assert "- **top1**: 0.464 (95% CI 0.451 to 0.477)" in md
    assert "- **skill_gap_high**: -" in md and "_ci" not in md  # an interval is shown with its value
    assert "- **effect_by_bucket**: [0.0123 (95% CI 0.0100 to 0.0150), -]" in md
    assert "- **positions**: 2000" in md


def test_end_of_run_text_is_one_screen_with_the_run_directory(tmp_path):
    (tmp_path / "results.md").write_text("x")
    summary = {"top1": 0.46372, "top1_ci95": [0.45, 0.48], **{f"top1_bucket_{b}": 0.4 for b in range(11)},
               **{f"metric_{i}": i / 7 for i in range(30)}}
    text = end_of_run_text("train (default)", summary, tmp_path, max_rows=12)
    lines = text.splitlines()
    assert len(lines) <= 16 and lines[0] == "== train (default) =="
    assert "top1_bucket" not in text and re.search(r"^  top1 +0\.464 \(95% CI 0\.450 to 0\.480\)$", text, re.M)
    assert f"run directory: {tmp_path}" in lines and "... 30 more in summary.md" in text
    assert "results.md" in lines[-1] and "model.safetensors" not in lines[-1]


def test_run_log_keeps_prints_warnings_and_a_bars_last_state(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("[hydra] already here\n")
    before = sys.stdout, sys.stderr
    with tee_output(log):
        print("store: 31 positions")
        sys.stderr.write("train:  50%|##   | 2/4\rtrain: 100%|#####| 4/4\n")
        print("no newline at the end", end="")
    assert (sys.stdout, sys.stderr) == before
    text = log.read_text().splitlines()
    assert text[0] == "[hydra] already here" and text[1].startswith("# ")
    assert text[2:] == ["store: 31 positions", "train: 100%|#####| 4/4", "no newline at the end"]


def test_the_skill_matrix_plot_of_a_level_without_positions_warns_nothing(tmp_path):
    import warnings

    import numpy as np

    from maia_adapt.reporting.plots import skill_matrix_heatmap

    values = np.random.default_rng(0).uniform(0.3, 0.6, (11, 11))
    values[5] = np.nan  # 1500-1599: no test position
    counts = np.full(11, 40)
    counts[5] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = skill_matrix_heatmap(values, [str(b) for b in range(11)], counts, tmp_path / "m.png", "t")
    assert path.stat().st_size > 0


def test_help_lists_every_stage_preset_and_protocol_with_what_it_does():
    import string

    from hydra import compose, initialize_config_dir

    from maia_adapt.config import CONF_DIR  # registers the maia_help resolver

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    # what Hydra does with the template for --help: a description's `$VAR` must not be a placeholder
    text = string.Template(cfg.hydra.help.template).substitute(FLAGS_HELP="", APP_CONFIG_GROUPS="",
                                                               HYDRA_CONFIG_GROUPS="", CONFIG="")
    for group in ("stage", "experiment", "protocol"):
        for f in (CONF_DIR / group).glob("*.yaml"):
            line = re.search(rf"^  {re.escape(f.stem)} +(\S.*)$", text, re.M)
            assert line and len(line.group(1)) > 10, f"{group}={f.stem} has no description in --help"
    assert re.search(r"^  sae +sparse autoencoders", text, re.M) and "$MAIA_ADAPT_DATA" in text
    assert "debug=default" in text and "== Stages (stage=NAME) ==" in text


def test_a_runs_metrics_become_one_curve_per_metric(tmp_path):
    from maia_adapt.reporting.plots import metric_curves

    m = tmp_path / "metrics.jsonl"
    m.write_text('{"step": 10, "train/loss": 2.0, "note": "x"}\n{"step": 20, "train/loss": 1.5, "eval/top1": 0.3}\n')
    assert metric_curves(m, tmp_path / "one.png", "t") is not None  # train/loss has two steps: drawn
    assert (tmp_path / "one.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m.write_text('{"step": 10, "train/loss": 2.0}\n{"step": 10, "eval/top1": 0.3}\n{"step": 20, "train/lo')
    assert metric_curves(m, tmp_path / "none.png", "t") is None and not (tmp_path / "none.png").exists()
