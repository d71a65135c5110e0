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
  return "\n".join(options)


def policy_prompt(question: str, options: Sequence[str],
                  instruction: str = POLICY_INSTRUCTION) -> str:
  """The hint writer's user turn: instruction, question and options, never the image."""
  return (f"{instruction}\nQuestion:\n{question}\nOptions:\n{format_options(options)}\n\n"
          "Prompt draft:")
