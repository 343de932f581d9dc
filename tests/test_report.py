import json

import pytest
import yaml

from groundiff.eval.report import (Facts, build_report, protocol1_table, protocol2_table, readme_block,
                                   replace_readme_block, results_page)
from groundiff.stages import report

OURS = dict(one_seen=91.0, one_unseen=80.5, two_seen=70.0, two_seen_unseen=60.0, two_unseen=50.0)
DAAM = dict(one_seen=60.0, one_unseen=55.0, two_seen=40.0, two_seen_unseen=41.0, two_unseen=42.0)
ZS3 = {"C": {"miou_seen": 70.0, "miou_unseen": 60.0, "hiou": 64.6},
       "D": {"miou_seen": 75.0, "miou_unseen": 70.0, "hiou": 72.41},
       "real_all": {"miou_seen": 80.0, "miou_unseen": 80.0, "hiou": 80.0}}


def write_metrics(root, p1=None, details=None, zs3=None):
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/protocol1.json").write_text(json.dumps(p1 or {"ours": OURS, "daam": DAAM}))
    (root / "metrics/zs3.json").write_text(json.dumps(zs3 or ZS3))
    if details is not None:
        (root / "metrics/protocol1_details.json").write_text(json.dumps(details))


def test_report_has_both_protocols_beside_the_paper_and_the_targets(project):
    write_metrics(project)
    report.main()
    text = (project / "reports/report.md").read_text()
    assert "| grounding module (this run, p > 0.5) | 91.0 | 80.5 | 70.0 | 60.0 | 50.0 |" in text
    assert "| DAAM (this run) | 60.0 | 55.0 | 40.0 | 41.0 | 42.0 |" in text
    # one seen 91 >= 85: met; one unseen 80.5 >= 55 + 20: met; two unseen 50 < 42 + 10: missed
    assert "| target (the first grounding module row) | ≥ 85 (met) | ≥ DAAM + 20 (met) |  |  | ≥ DAAM + 10 (missed) |" in text
    assert "| Grounded Diffusion (paper, SD + PASCAL-sim) | 90.3 | 83.1 | 79.1 | 67.9 | 55.7 |" in text
    # C: 64.6 / 80 = 81% (target 80: met); D: 72.41 / 80 = 91% (target 90: met); the paper's Model-C hIoU beside
    assert "| C | 70.0 | 60.0 | 64.6 | 81% | ≥ 80% (met) | 66.2 |" in text
    assert "| D | 75.0 | 70.0 | 72.4 | 91% | ≥ 90% (met) | 76.7 |" in text
    assert "| real_all | 80.0 | 80.0 | 80.0 | 100% |  | — |" in text
    assert "| Model-E (paper) | 83.4 | 74.4 | 78.7 |" in text
    assert "unseen classes: ring, heart, arrow" in text and "`val` split" in text


def test_report_says_what_has_not_run(tmp_path):
    text = build_report("shapes", 1, {}, root=tmp_path)
    assert "Not yet run: stage `eval_grounding`" in text and "Not yet run: stage `eval_zs3`" in text
    assert "| Grounded Diffusion (paper, SD + PASCAL-sim) | 90.3 |" in text  # the paper's rows all the same
    text = build_report("shapes", 1, {}, root=tmp_path, how_to_run=lambda stage: f"`dvc repro {stage}`")
    assert "Not yet run: `dvc repro eval_grounding`" in text and "Not yet run: `dvc repro eval_zs3`" in text
    assert "Not yet run: stage `eval_zs3`" in results_page(tmp_path)
    with pytest.raises(FileNotFoundError, match="run the pipeline first"):
        readme_block(tmp_path)


def test_report_lists_the_method_settings_as_params_yaml_gives_them(project):
    """Exactly the keys params.yaml writes (no defaults filled in), whatever the schema adds."""
    report.main()
    text = (project / "reports/report.md").read_text()
    synthesize = yaml.safe_load((project / "params.yaml").read_text())["synthesize"]
    assert set(synthesize) == {"capture_t", "sampling", "shard_size"}  # the test's premise: no key left out
    assert f'- `synthesize`: `{json.dumps(synthesize, sort_keys=True)}`' in text
    assert '"A": {"real": "none", "synthetic": ["one"]}' in text and '"real_share": 0.25' in text
    assert '"bucket_widths": []' in text and "template_one" not in text


def test_the_other_test_time_norm_is_a_second_row_from_details_or_from_protocol1_json():
    other = {k: v - 1 for k, v in OURS.items()}
    details = {"norm_at_test": {"headline": "running", "other": "batch", "ours_other": other}}
    rows = protocol1_table({"ours": OURS, "daam": DAAM}, details, Facts(mask_threshold=0.4)).splitlines()
    assert rows[3] == "| grounding module (this run, p > 0.4, norm_at_test running) | 91.0 | 80.5 | 70.0 | 60.0 | 50.0 |"
    assert rows[4] == "| grounding module (this run, p > 0.4, norm_at_test batch) | 90.0 | 79.5 | 69.0 | 59.0 | 49.0 |"
    assert rows[5].startswith("| target (the first grounding module row) | ≥ 85 (met)")  # the headline row's, not the other
    # a file whose extra row sits in protocol1.json itself
    rows = protocol1_table({"ours": OURS, "daam": DAAM, "ours_norm_batch": other}).splitlines()
    assert rows[4] == "| grounding module (this run, ours_norm_batch) | 90.0 | 79.5 | 69.0 | 59.0 | 49.0 |"
    # without a second row: three rows of this run's, then the target
    assert protocol1_table({"ours": OURS, "daam": DAAM}).splitlines()[4].startswith("| target")


def test_protocol2_without_the_reference_shows_no_share_and_a_missing_value_as_a_dash():
    table = protocol2_table({"C": {"miou_seen": 70.0, "miou_unseen": None, "hiou": None}, "split": "val"})
    assert table.splitlines()[2] == "| C | 70.0 | — | — | — | ≥ 80% | 66.2 |"
    assert len(table.splitlines()) == 3  # non-variant entries are skipped


def test_results_page_embeds_the_studies_with_links_that_still_resolve(tmp_path):
    write_metrics(tmp_path, details={"threshold_curve": {
        "seen_classes": {"0.3": 60.0, "0.5": 55.0},
        **{c: {"0.3": v + 2, "0.5": v} for c, v in OURS.items()}},
        "counts": {c: {"evaluated": 50, "pairs": 60} for c in OURS}})
    (tmp_path / "reports/studies").mkdir(parents=True)
    (tmp_path / "reports/figures").mkdir()
    (tmp_path / "reports/figures/zs3_predictions.png").write_bytes(b"png")
    (tmp_path / "reports/studies/seeds.md").write_text(
        "# Seed study\n\n| variant | hIoU |\n|---|---|\n| C | 60.0 ± 1.0 |\n\n![plot](../figures/zs3_predictions.png)\n"
        "\n```bash\n# a comment, not a heading: [x](y)\n```\n")
    (tmp_path / "reports/studies/seeds.json").write_text("{}")
    (tmp_path / "reports/studies/only_json.json").write_text("{}")
    page = results_page(tmp_path, world="shapes", split=1)
    assert "### seeds\n\n### Seed study\n\n| variant | hIoU |" in page
    assert "![plot](../reports/figures/zs3_predictions.png)" in page  # relinked from docs/
    assert "```bash\n# a comment, not a heading: [x](y)\n```" in page  # code blocks as they are
    assert "Source: [seeds.md](../reports/studies/seeds.md), [seeds.json](../reports/studies/seeds.json)." in page
    assert "### only_json\n\nSource: [only_json.json](../reports/studies/only_json.json)." in page
    assert "sweep picks on seen-class pairs alone (0.3)" in page and "one seen 93.0" in page
    assert "one seen 50 / 60" in page
    assert "![Protocol II predictions](../reports/figures/zs3_predictions.png)" in page
    assert "## Studies\n\nNone in `reports/studies/` yet: `groundiff study <name>`" in results_page(tmp_path / "elsewhere")


def test_readme_flag_rewrites_only_the_results_block(project):
    write_metrics(project)
    (project / "README.md").write_text("# title\n\nkept\n<!-- results:begin -->\nold\n<!-- results:end -->\ntail\n")
    report.main(["--readme"])
    text = (project / "README.md").read_text()
    assert text.startswith("# title\n\nkept\n<!-- results:begin -->\n") and text.endswith("<!-- results:end -->\ntail\n")
    assert "| C | 70.0 | 60.0 | 64.6 | 81% | ≥ 80% (met) | 66.2 |" in text and "old" not in text
    assert not (project / "reports/report.md").exists()  # --readme writes nothing else
    with pytest.raises(ValueError, match="no <!-- results:begin --> ... <!-- results:end --> block"):
        replace_readme_block("# no markers\n", "x")
    with pytest.raises(ValueError, match="takes none, or --readme"):
        report.main(["--readme", "extra"])
