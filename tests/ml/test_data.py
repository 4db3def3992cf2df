"""Building training pairs from judgements."""

from training.ml.data import Judgement, build_examples, split_by_prompt
from training.ml.synthetic import preference_judgements

MSG = [{"role": "user", "content": "q"}]
REPLIES = {"a": "reply a", "b": "reply b", "c": "reply c"}


def j(ranking, choice="A", strength=None, prompt="p1"):
    return Judgement(prompt_id=prompt, messages=MSG, replies=REPLIES, ranking=ranking, choice=choice, strength=strength)


def test_pairwise_choice_gives_one_pair():
    [example] = build_examples([j([["b"], ["a"]], "B", 3)])
    assert example.replies == ["reply b", "reply a"] and example.pairs == [(0, 1, 0.0)]


def test_strength_becomes_margin_when_asked():
    [example] = build_examples([j([["a"], ["b"]], "A", 4)], use_margin=True, margin_scale=0.25)
    assert example.pairs == [(0, 1, 1.0)]
    [no_strength] = build_examples([j([["a"], ["b"]], "A", None)], use_margin=True)
    assert no_strength.pairs == [(0, 1, 0.0)]


def test_both_bad_is_excluded_and_ties_only_when_asked():
    assert build_examples([j([["a", "b"]], "both_bad")], include_ties=True) == []
    assert build_examples([j([["a", "b"]], "tie")]) == []
    [tie] = build_examples([j([["a", "b"]], "tie")], include_ties=True)
    assert tie.pairs == [] and tie.ties == [(0, 1)]


def test_ranking_expands_to_all_pairs_in_one_example():
    [example] = build_examples([j([["c"], ["a", "b"]], "ranking", 2)], include_ties=True)
    assert example.replies == ["reply c", "reply a", "reply b"]
    assert example.pairs == [(0, 1, 0.0), (0, 2, 0.0)]
    assert example.ties == [(1, 2)]
    [strict] = build_examples([j([["c"], ["a"], ["b"]], "ranking")])
    assert strict.pairs == [(0, 1, 0.0), (0, 2, 0.0), (1, 2, 0.0)]


def test_several_annotators_on_one_task_give_several_examples():
    examples = build_examples([j([["a"], ["b"]]), j([["b"], ["a"]], "B"), j([["a"], ["b"]])])
    assert len(examples) == 3
    assert [e.replies[e.pairs[0][0]] for e in examples] == ["reply a", "reply b", "reply a"]


def test_split_keeps_each_prompt_on_one_side():
    examples = build_examples(preference_judgements(50) + preference_judgements(50))  # every prompt twice
    train, val = split_by_prompt(examples, 0.2, seed=3)
    assert {e.prompt_id for e in train}.isdisjoint({e.prompt_id for e in val})
    assert len(val) == 20 and len(train) == 80
