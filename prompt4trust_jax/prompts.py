"""Prompt4Trust's prompt templates (the "paper" preset, ../shared/METHOD.md)."""

from collections.abc import Sequence

POLICY_INSTRUCTION = (
    "You are assisting a downstream vision-language model (VLM) with answering a multiple-choice "
    "question about an image. You do not have access to the image or the correct answer. Do not "
    "give an answer to the question. Your task is to write a neutral hint based only on the "
    "question and answer options, to guide the VLM on what visual evidence to consider and what "
    "reasoning steps to use when answering.")


def format_options(options: Sequence[str]) -> str:
  """One option per line, as the data carries them ("A:...", "B:...")."""
  if isinstance(options, str):  # a str is a Sequence[str]; joining it would split characters
    raise TypeError(f"options must be a list of option lines, got the str {options!r}.")
  return "\n".join(options)


def policy_prompt(question: str, options: Sequence[str],
                  instruction: str = POLICY_INSTRUCTION) -> str:
  """The hint writer's user turn: instruction, question and options, never the image."""
  return f"{_question_block(instruction, question, options)}\n\nPrompt draft:"


def _question_block(instruction: str, question: str, options: Sequence[str]) -> str:
  # Both models see the task laid out the same way (METHOD.md, "Prompt templates").
  return f"{instruction}\nQuestion:\n{question}\nOptions:\n{format_options(options)}"


# The reply the downstream model is asked for; `constraints` builds its completions from it.
ANSWER_FORMAT = "In conclusion, the answer is {LETTER} with confidence {CONFIDENCE}."

DOWNSTREAM_INSTRUCTION = (
    "You are answering a multiple-choice question with four options (A, B, C, or D).\n"
    "Clearly state your final answer and confidence in the following format only:\n"
    f"'{ANSWER_FORMAT}'\n"
    "Replace {LETTER} with one of A, B, C, or D, and {CONFIDENCE} with a number between 0 and "
    "100.\n"
    "After giving the answer, explain your reasoning based on the image and the question.")

# The abstention evaluation: a fifth option on every question, and an instruction that offers it.
ABSTAIN_OPTION = "E:I don't know"
ABSTAIN_INSTRUCTION = (
    "You are answering a multiple-choice question with five options (A, B, C, D, or E). "
    "Option E means that you do not know the answer: choose it instead of guessing.\n"
    "Clearly state your final answer and confidence in the following format only:\n"
    f"'{ANSWER_FORMAT}'\n"
    "Replace {LETTER} with one of A, B, C, D, or E, and {CONFIDENCE} with a number between 0 "
    "and 100.\n"
    "After giving the answer, explain your reasoning based on the image and the question.")

# The fixed-hint baseline's sentence. METHOD.md appends it to "the downstream prompt" without
# saying where; here it is the hint (`downstream_prompt(..., hint=FIXED_HINT)`), so the
# baseline differs from Prompt4Trust only in the hint text.
FIXED_HINT = "Think step-by-step, do not be over-confident."


def downstream_prompt_split(question: str, options: Sequence[str], hint: str | None,
                            instruction: str = DOWNSTREAM_INSTRUCTION) -> tuple[str, str]:
  """`(shared_prefix, hint_suffix)` of the downstream prompt, so G hints share one prefill.

  The prefix stops after "Hint:" and the suffix starts with the space before the hint: Qwen's
  pre-tokenizer splits there anyway (":" then " word"), so tokenizing the two halves apart
  gives the same ids as tokenizing the whole prompt. Without a hint (the no-hint baseline)
  the "Hint:" line is dropped and the suffix is the closing "Answer:".
  """
  block = _question_block(instruction, question, options)
  if hint is None:
    return block, "\n\nAnswer:"
  return f"{block}\nHint:", f" {hint}\n\nAnswer:"


def downstream_prompt(question: str, options: Sequence[str], hint: str | None,
                      instruction: str = DOWNSTREAM_INSTRUCTION) -> str:
  """The frozen VLM's user text (the image goes before it); `hint=None` is the no-hint baseline."""
  return "".join(downstream_prompt_split(question, options, hint, instruction))


# The noise mitigation: the policy LLM cleans a noisy question before the downstream sees it.
REWRITE_QUESTION_INSTRUCTION = (
    "The medical multiple-choice question below may contain typos, abbreviations, missing or "
    "swapped words and odd capitalisation. Rewrite the question in clear, correctly spelled "
    "English without changing its meaning. Do not answer it. Reply with the rewritten question "
    "only.")


def rewrite_question_prompt(question: str, options: Sequence[str],
                            instruction: str = REWRITE_QUESTION_INSTRUCTION) -> str:
  """The rewriter's user turn: the options are shown for context; only the question is rewritten."""
  return f"{_question_block(instruction, question, options)}\n\nRewritten question:"
