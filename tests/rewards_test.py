"""Rewards, weighted terms with a veto, and the answer-leak veto, on hand-worked values."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from prompt4trust_jax.training import rewards

LOG_1E12 = math.log(1e-12)  # -27.631...
LOG_1E10 = math.log(1e-10)  # -23.025...


def _judged(letters, confidences, answers):
  """None in `letters` marks an invalid response (letter -1, confidence 0)."""
  valid = [l is not None for l in letters]
  return rewards.Judged(
      letter_B=jnp.array([-1 if l is None else l for l in letters], jnp.int32),
      confidence_B=jnp.array([0.0 if l is None else c for l, c in zip(letters, confidences)],
                             jnp.float32),
      valid_B=jnp.array(valid),
      answer_B=jnp.array(answers, jnp.int32))


# Rows: correct c=0.8, wrong c=0.8, wrong c=1.0, correct c=0.0, invalid, correct c=1.0.
CASES = _judged([1, 0, 2, 3, None, 0], [0.8, 0.8, 1.0, 0.0, 0.5, 1.0], [1, 1, 1, 3, 2, 0])


def test_correct_marks_valid_matching_rows():
  np.testing.assert_array_equal(CASES.correct_B, [True, False, False, True, False, True])


def test_clinical_matches_the_paper():
  expected = [math.log(0.8), math.log(0.2) - 1, LOG_1E10 - 1, LOG_1E10, LOG_1E12, 0.0]
  got = rewards.clinical(CASES)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  assert float(got[4]) == pytest.approx(-27.631, abs=1e-3)


def test_clinical_params():
  got = rewards.clinical(CASES, clip_min=1e-4, wrong_penalty=2.5, invalid_reward=-50.0)
  expected = [math.log(0.8), math.log(0.2) - 2.5, math.log(1e-4) - 2.5, math.log(1e-4), -50.0, 0.0]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_log_score_has_no_wrong_penalty():
  expected = [math.log(0.8), math.log(0.2), LOG_1E10, LOG_1E10, LOG_1E12, 0.0]
  np.testing.assert_allclose(rewards.log_score(CASES), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["clinical", "log_score"])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.73])
def test_expected_reward_is_maximised_by_the_true_accuracy(name, p):
  grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
  n = len(grid)
  # Each confidence once answered correctly (letter 0) and once wrongly (letter 1); answer 0.
  judged = _judged([0] * n + [1] * n, np.concatenate([grid, grid]), [0] * (2 * n))
  reward = np.asarray(jax.jit(rewards.get_reward(name))(judged))
  expected = p * reward[:n] + (1 - p) * reward[n:]
  assert grid[np.argmax(expected)] == pytest.approx(p)
  # And it is the closed form p log c + (1 - p) log(1 - c) (minus the penalty's share).
  penalty = 1.0 if name == "clinical" else 0.0
  closed = p * np.log(grid) + (1 - p) * (np.log(1 - grid) - penalty)
  np.testing.assert_allclose(expected, closed, rtol=1e-5, atol=1e-5)


def test_brier():
  expected = [-(0.8 - 1) ** 2, -(0.8 ** 2), -1.0, -1.0, -1.0, 0.0]
  np.testing.assert_allclose(rewards.brier(CASES), expected, rtol=1e-6, atol=1e-7)
  assert float(rewards.brier(CASES, invalid_reward=-3.0)[4]) == -3.0


def test_format_only():
  np.testing.assert_array_equal(rewards.format_only(CASES), [1, 1, 1, 1, 0, 1])
  np.testing.assert_array_equal(rewards.format_only(CASES, valid_reward=0.5, invalid_reward=-2.0),
                                [0.5, 0.5, 0.5, 0.5, -2.0, 0.5])


def test_unknown_reward_names_the_choices():
  with pytest.raises(ValueError, match=r"'calibration'.*'brier'.*'clinical'"):
    rewards.get_reward("calibration")
  with pytest.raises(ValueError, match="Unknown veto 'leak'"):
    rewards.get_veto("leak")


TERMS = (("clinical", 1.0, {}), ("brier", 0.5, {}), ("format_only", 2.0, {"invalid_reward": -1.0}))
CLINICAL = np.array([math.log(0.8), math.log(0.2) - 1, LOG_1E10 - 1, LOG_1E10, LOG_1E12, 0.0])
BRIER = np.array([-0.04, -0.64, -1.0, -1.0, -1.0, 0.0])
FORMAT = np.array([1.0, 1.0, 1.0, 1.0, -1.0, 1.0])
WEIGHTED = CLINICAL + 0.5 * BRIER + 2.0 * FORMAT


def test_combine_weights_terms():
  total, per_term = rewards.combine(CASES, TERMS)
  np.testing.assert_allclose(total, WEIGHTED, rtol=1e-5, atol=1e-5)
  assert sorted(per_term) == ["brier", "clinical", "format_only"]
  np.testing.assert_allclose(per_term["clinical"], CLINICAL, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(per_term["brier"], BRIER, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(per_term["format_only"], FORMAT)


def test_veto_sets_the_floor_and_keeps_terms_raw():
  veto = np.array([False, True, False, False, True, True])
  total, per_term = jax.jit(lambda j, v: rewards.combine(j, TERMS, v, floor=-40.0))(CASES, veto)
  np.testing.assert_allclose(total, np.where(veto, -40.0, WEIGHTED), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(per_term["clinical"], CLINICAL, rtol=1e-5, atol=1e-6)
  # The default floor is the paper's invalid reward.
  total, _ = rewards.combine(CASES, TERMS, veto)
  np.testing.assert_allclose(total[veto], LOG_1E12, rtol=1e-6)


def test_combine_rejects_bad_terms():
  with pytest.raises(ValueError, match="wrong_penalty"):
    rewards.combine(CASES, (("brier", 1.0, {"wrong_penalty": 2.0}),))
  with pytest.raises(ValueError, match="repeat"):
    rewards.combine(CASES, (("brier", 1.0, {}), ("brier", 2.0, {})))
  with pytest.raises(ValueError, match="Unknown reward"):
    rewards.combine(CASES, (("nll", 1.0, {}),))


def test_summarize():
  veto = np.array([False, True, False, False, True, True])
  total, per_term = rewards.combine(CASES, TERMS, veto)
  metrics = jax.jit(rewards.summarize)(per_term, total, veto)
  for name, values in [("clinical", CLINICAL), ("brier", BRIER), ("format_only", FORMAT),
                       ("total", np.where(veto, LOG_1E12, WEIGHTED))]:
    assert float(metrics[f"{name}/mean"]) == pytest.approx(values.mean(), rel=1e-5)
    assert float(metrics[f"{name}/std"]) == pytest.approx(values.std(), rel=1e-5)
    assert metrics[f"{name}/mean"].shape == ()
  assert float(metrics["veto/rate"]) == pytest.approx(0.5)
  assert "veto/rate" not in rewards.summarize(per_term, total)


def test_judged_from_texts():
  judged = rewards.judged_from_texts(
      ["In conclusion, the answer is B with confidence 80.",
       "the answer is A with confidence 30.",
       "I cannot tell."], ["B", 2, "d"])
  np.testing.assert_array_equal(judged.letter_B, [1, 0, -1])
  np.testing.assert_allclose(judged.confidence_B, [0.8, 0.3, 0.0])
  np.testing.assert_array_equal(judged.answer_B, [1, 2, 3])
  np.testing.assert_array_equal(judged.correct_B, [True, False, False])
  np.testing.assert_allclose(rewards.clinical(judged),
                             [math.log(0.8), math.log(0.7) - 1, LOG_1E12], rtol=1e-5)
  with pytest.raises(ValueError, match="'E' is not an option"):
    rewards.judged_from_texts(["x"], ["E"])
  with pytest.raises(ValueError, match="2 responses but 1 answers"):
    rewards.judged_from_texts(["x", "y"], [0])


@pytest.mark.parametrize("hint, answer, leaks", [
    ("Look for hyperintensity; the answer is B", "B", True),
    ("The correct answer is (c)", "C", True),
    ("the answer is: D.", "D", True),
    ("Answer: B", "B", True),
    ("I think the answer would be option a", "A", True),
    ("Option B is correct because of the enhancement.", "B", True),
    ("option [b] is the right one", "B", True),
    ("Clearly B is the correct answer.", "B", True),
    ("The answer is 2.", "2", True),  # numbered options (MedMCQA)
    ("Consider whether option B fits the enhancement pattern", "B", False),
    ("The answer is A", "B", False),  # a wrong option is not a leak (see answer_leak)
    ("Option A is correct only if the lesion enhances.", "B", False),
    ("The answer is a matter of where the lesion sits.", "A", False),  # English "a"
    ("The answer is Based on the T2 signal.", "B", False),  # the letter must stand alone
    ("Option B is not correct if the margins are smooth.", "B", False),
    ("No hint at all.", "C", False),
    ("The answer is 25 mm or more.", "2", False),
])
def test_answer_leak(hint, answer, leaks):
  assert rewards.answer_leak([hint], [answer]).tolist() == [leaks]


def test_answer_leak_batch_and_errors():
  got = rewards.answer_leak(["the answer is B", "the answer is B"], ["B", "c"])
  assert got.dtype == np.bool_ and got.tolist() == [True, False]
  with pytest.raises(ValueError, match="2 hints but 1 answers"):
    rewards.answer_leak(["a", "b"], ["A"])
  with pytest.raises(ValueError, match="'B or C'"):
    rewards.answer_leak(["a"], ["B or C"])
  with pytest.raises(TypeError):
    rewards.answer_leak("the answer is B", "B")


def test_from_config_single_reward():
  spec = rewards.from_config(ml_collections.ConfigDict(dict(
      name="clinical", params=dict(wrong_penalty=2.0))))
  total, per_term = jax.jit(spec)(CASES)
  expected = [math.log(0.8), math.log(0.2) - 2, LOG_1E10 - 2, LOG_1E10, LOG_1E12, 0.0]
  np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-6)
  assert list(per_term) == ["clinical"]
  assert not spec.veto_mask(["the answer is B"], ["B"]).any()  # no veto configured


def test_from_config_terms_with_veto():
  config = ml_collections.ConfigDict(dict(
      terms=[dict(name="clinical"), dict(name="brier", weight=0.5),
             dict(name="format_only", weight=2.0, params=dict(invalid_reward=-1.0))],
      veto="answer_leak", floor=-40.0))
  spec = rewards.from_config(config)
  hints = ["Look at the signal.", "The answer is A.", "x", "y", "z", "Option A is correct."]
  veto = spec.veto_mask(hints, ["B", "A", "B", "D", "C", "A"])
  np.testing.assert_array_equal(veto, [False, True, False, False, False, True])
  total, _ = jax.jit(spec)(CASES, veto)
  np.testing.assert_allclose(total, np.where(veto, -40.0, WEIGHTED), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="veto_B=spec.veto_mask"):
    spec(CASES)
  assert hash(spec) == hash(rewards.from_config(config))  # usable as a static jit argument


@pytest.mark.parametrize("config, match", [
    (dict(), "exactly one of"),
    (dict(name="clinical", terms=[]), "exactly one of"),
    (dict(name="clinical", penalty=1.0), "Unknown reward config keys"),
    (dict(terms=[dict(name="brier", weigth=1.0)]), "may have only"),
    (dict(terms=[dict(name="brier")], params=dict(invalid_reward=0.0)), "Top-level `params`"),
    (dict(name="clinical", params=dict(clip=1e-3)), "takes"),
    (dict(name="clinical", veto="toxicity"), "Unknown veto"),
    (dict(terms=[]), "No reward terms"),
])
def test_from_config_errors(config, match):
  with pytest.raises(ValueError, match=match):
    rewards.from_config(config)


def test_judged_from_answers_marks_correct_valid_rows():
  from prompt4trust_jax.downstream import answerer as downstream
  answers = downstream.Answers(letter_index=np.array([1, -1, 2]),
                               confidence=np.array([0.9, 0.0, 0.4], np.float32),
                               valid=np.array([True, False, True]), texts=["", "", ""],
                               option_probs=None, num_tokens=np.array([3, 1, 3]))
  judged = rewards.Judged.from_answers(answers, np.array([1, 1, 0], np.int32))
  np.testing.assert_array_equal(judged.correct_B, [True, False, False])
  np.testing.assert_allclose(judged.confidence_B, [0.9, 0.0, 0.4])
