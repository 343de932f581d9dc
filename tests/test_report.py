import json

from groundiff.eval.report import build_report
from groundiff.stages import report


def test_report_has_both_protocols_beside_the_paper(project):
    (project / "metrics").mkdir()
    (project / "metrics/protocol1.json").write_text(json.dumps({
        "ours": dict(one_seen=91.0, one_unseen=80.5, two_seen=70.0, two_seen_unseen=60.0, two_unseen=50.0),
        "daam": dict(one_seen=60.0, one_unseen=55.0, two_seen=40.0, two_seen_unseen=41.0, two_unseen=42.0),
    }))
    (project / "metrics/zs3.json").write_text(json.dumps({"C": {"miou_seen": 70.0, "miou_unseen": 60.0, "hiou": 64.6}}))
    report.main()
    text = (project / "reports/report.md").read_text()
    assert "| ours (grounding module) | 91.0 | 80.5 | 70.0 | 60.0 | 50.0 |" in text
    assert "| Grounded Diffusion (paper) | 90.3 | 83.1 | 79.1 | 67.9 | 55.7 |" in text
    assert "| C | 70.0 | 60.0 | 64.6 |" in text and "| Model-E (paper) | 83.4 | 74.4 | 78.7 |" in text
    assert "unseen classes: ring, heart, arrow" in text


def test_report_says_what_has_not_run(tmp_path):
    text = build_report("shapes", 1, {}, root=tmp_path)
    assert "Not yet run: stage `eval_grounding`" in text and "Not yet run: stage `eval_zs3`" in text
    text = build_report("shapes", 1, {}, root=tmp_path, how_to_run=lambda stage: f"`dvc repro {stage}`")
    assert "Not yet run: `dvc repro eval_grounding`" in text and "Not yet run: `dvc repro eval_zs3`" in text


def test_report_lists_the_method_settings_as_params_yaml_gives_them(project):
    """Exactly the keys params.yaml writes (no defaults filled in), whatever the schema adds."""
    report.main()
    text = (project / "reports/report.md").read_text()
    assert '- `synthesize`: `{"capture_t": 1, "sampling": {"batch_size": 50, "guidance_scale": 5.0, ' \
           '"precision": "bf16", "steps": 25}, "shard_size": 100}`' in text
    assert '"A": {"real": "none", "synthetic": ["one"]}' in text and '"real_share": 0.25' in text
    assert '"bucket_widths": []' in text and "template_one" not in text
