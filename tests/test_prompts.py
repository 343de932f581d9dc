import numpy as np
import pytest

from groundiff.data.prompts import PromptConfig, class_list, read_prompts, sample_prompts

SEEN = ("circle", "square", "triangle", "star")


def test_prompt_statistics_follow_the_paper():
    table = sample_prompts(SEEN, PromptConfig(n=4000, seed=1))
    two = (table["n_objects"] == 2).mean()
    assert abs(two - 0.5) < 0.03  # 1 or 2 classes with probability 1/2 (4000 draws: sd ~0.008)
    names = [c for cell in table["classes"] for c in class_list(cell)]
    assert set(names) == set(SEEN)
    counts = np.array([names.count(c) for c in SEEN])
    expected = len(names) / len(SEEN)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 16.3  # uniform over seen classes: chi^2 with 3 dof, p = 0.001
    # with replacement: some two-object prompts repeat a class
    pairs = table[table["n_objects"] == 2]["classes"].map(class_list)
    assert any(a == b for a, b in pairs)


def test_templates_and_seeds():
    table = sample_prompts(SEEN, PromptConfig(n=50, seed=3))
    for _, row in table.iterrows():
        names = class_list(row["classes"])
        expected = "a photograph of a " + " and a ".join(names)
        assert row["prompt"] == expected
    again = sample_prompts(SEEN, PromptConfig(n=80, seed=3))
    assert table.equals(again.iloc[:50])  # rows are stable when the table grows
    assert table["seed"].is_unique


def test_bad_prompt_config():
    with pytest.raises(ValueError, match="positive"):
        PromptConfig(n=0)
    with pytest.raises(ValueError, match="probability"):
        PromptConfig(two_object_prob=1.5)


def test_read_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv: no prompt table"):
        read_prompts(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("index,prompt,classes,n_objects,seed\n")
    with pytest.raises(ValueError, match="empty"):
        read_prompts(empty)
