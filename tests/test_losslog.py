from groundiff.core import losslog


def test_resumed_log_equals_uninterrupted(tmp_path):
    path = tmp_path / "log.csv"
    losslog.append_rows(path, [{"step": s, "loss": 1.0 / s} for s in range(1, 6)])  # ran to step 5 ...
    losslog.truncate(path, 3)  # ... but the last checkpoint was at step 3
    losslog.append_rows(path, [{"step": s, "loss": 1.0 / s} for s in range(4, 8)])
    rows = losslog.read_rows(path)
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert path.read_text().count("step,loss") == 1
    assert losslog.read_rows(tmp_path / "missing.csv") == []
    losslog.truncate(tmp_path / "missing.csv", 3)  # nothing to do
