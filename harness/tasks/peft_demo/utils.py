"""Data and prompt of the peft_demo task: the jsonl beside this file, in the alpaca prompt format."""

from pathlib import Path

import datasets

from peft_framework.data.formatting import format_instruction

DATA = Path(__file__).with_name("peft_demo.jsonl")


def load(**kwargs) -> datasets.DatasetDict:
    """The task's documents as a `test` split, read from this directory wherever lm-eval runs."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_json(str(DATA))})


def prompt(doc: dict) -> str:
    return format_instruction(doc["instruction"], doc["input"], "alpaca")
