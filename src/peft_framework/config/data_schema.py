"""The `data` section of the config: sources, cleaning, validation, split and formatting."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from peft_framework.config.section import Section
from peft_framework.config.source_entries import MAX_MIXED_ROWS, MAX_WEIGHT

# ---------------------------------------------------------------------------------------------- data
DATA_FIELDS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "input", "output"),
    "chat": ("messages", "role", "content"),
    "text": ("text",),
    "classification": ("text", "label"),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired_preference": ("prompt", "completion", "label"),
    "vision": ("messages", "role", "content", "images"),
    "prompt": ("prompt", "role", "content"),
}
"""Canonical field names per `data.kind`: the keys `data.columns` may map to other column names."""

CHAT_TEMPLATES: tuple[str, ...] = ("chatml", "llama-3", "mistral", "alpaca")
"""Chat templates shipped with the framework (`data.chat_template: NAME`; files in models/chat_templates)."""


class CleanConfig(Section):
    unicode_normalization: Literal["NFC", "NFKC", "none"] = Field(
        "NFC", description="Unicode normal form applied to every text field ('none' keeps text as read)."
    )
    normalize_whitespace: bool = Field(
        True,
        description="CRLF -> LF, exotic spaces -> ' ', trailing spaces per line and 3+ blank lines removed, "
        "fields stripped. Indentation inside lines is kept.",
    )
    remove_control_chars: bool = Field(
        True,
        description="Drop control characters (not tab or newline) and invisible ones (zero-width space, BOM)",
    )
    drop_empty: bool = Field(True, description="Reject rows whose required fields are empty after cleaning.")
    dedup: Literal["none", "exact", "normalized"] = Field(
        "normalized",
        description="'exact': drop rows identical (once cleaned) to an earlier row; 'normalized': also rows "
        "equal after NFKC, case folding and whitespace collapsing. The first occurrence is kept.",
    )
    min_chars: int = Field(1, ge=0, description="Minimum characters over all text fields.")
    max_chars: int | None = Field(20000, ge=1, description="Maximum characters over all text fields.")
    min_tokens: int = Field(0, ge=0, description="Minimum tokens of the formatted row (before truncation).")
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Reject rows with more tokens than this (before truncation); null: truncate instead.",
    )
    label_case: Literal["lower", "upper", "none"] = "lower"
    label_aliases: dict[str, str] = Field(
        default_factory=dict, description="classification: label -> canonical label, e.g. {pos: positive}."
    )
    role_aliases: dict[str, str] = Field(
        default_factory=dict, description="chat: role -> canonical role, e.g. {human: user, gpt: assistant}."
    )


class ValidateConfig(Section):
    max_rejected_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Fail the stage when more than this fraction of the rows read is rejected.",
    )
    allowed_roles: list[str] = Field(default_factory=lambda: ["system", "user", "assistant"])
    labels: list[str] | None = Field(
        None,
        description="classification: the allowed label set (after normalization); null: every label seen.",
    )


class SplitConfig(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = Field(42, description="Rows are assigned by a hash of seed + normalized content (stable).")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError(
                f"validation + test = {self.validation + self.test:g} leaves no training data; allowed: sum < 1"
            )
        return self


class ImagesConfig(Section):
    """data.kind vision: what an image must be to be kept (data/vision.py)."""

    max_pixels: int = Field(
        4096 * 4096,
        ge=1,
        description="Reject images with more pixels than this (decompression bombs). PIL's own guard "
        "(Image.MAX_IMAGE_PIXELS) stays on as well.",
    )
    min_size: int = Field(8, ge=1, description="Reject images narrower or lower than this many pixels.")


class SourceEntry(Section):
    """One weighted entry of `data.source` (see `peft_framework.data.mixing` for the exact semantics)."""

    path: str = Field(description="File, glob, directory or 'hf:owner/name', as a plain data.source entry.")
    weight: float | None = Field(
        None,
        gt=0,
        le=MAX_WEIGHT,
        description="The entry's kept rows times this (round half up): 2 = every row twice, 0.5 = half of "
        "them, sampled without replacement (seeded by data.split.seed).",
    )
    count: int | None = Field(
        None,
        ge=1,
        le=MAX_MIXED_ROWS,
        description="Exactly this many rows of the entry's kept rows: whole passes over them, the rest "
        "sampled without replacement (seeded by data.split.seed).",
    )

    @model_validator(mode="after")
    def _weight_or_count(self) -> SourceEntry:
        if self.weight is not None and self.count is not None:
            raise ValueError(
                f"both weight ({self.weight:g}) and count ({self.count}) given; allowed: one of them"
            )
        return self


class DataConfig(Section):
    source: str | list[str | SourceEntry] = Field(
        "data/raw/instructions.jsonl",
        description="File, glob, directory, list of those, or a HuggingFace dataset id ('hf:owner/name'). "
        "A list entry may be {path: ..., weight: W} or {path: ..., count: N} to mix sources "
        "(plain entries count once).",
    )
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet"] = Field(
        "auto",
        description="'auto': from the file extension (.jsonl/.ndjson, .json, .csv, .tsv, .parquet, + .gz).",
    )
    kind: Literal[
        "instruction",
        "chat",
        "text",
        "classification",
        "preference",
        "unpaired_preference",
        "vision",
        "prompt",
    ] = Field(
        "instruction",
        description="instruction | chat | text | classification | preference (prompt/chosen/rejected: text, or "
        "chat message lists split at the first divergent turn) | unpaired_preference (prompt/completion/label "
        "true|false) | vision (chat messages whose content parts include {type: image} placeholders, plus an "
        "images column: paths relative to the data file, or image bytes; needs model.task image_text_to_text) | "
        "prompt (a prompt, text or chat messages, plus any other columns, which the reward functions of an "
        "online objective read; data/prompt.py). The preference kinds need a preference train.objective, and the other kinds sft.",
    )
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> column name in the source, e.g. {output: answer}.",
    )
    hf_split: str = "train"
    hf_config: str | None = Field(None, description="Config (subset) name of a HuggingFace dataset.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    split: SplitConfig = Field(default_factory=SplitConfig)
    template: Literal["auto", "alpaca", "chat_template", "plain"] = Field(
        "auto",
        description="Prompt format. instruction data: 'alpaca' (default for 'auto'), 'chat_template' (the "
        "tokenizer's), or 'plain' (instruction and input joined by newlines); chat data always uses the "
        "chat template. With data.chat_template set, 'auto' means 'chat_template'.",
    )
    chat_template: str | None = Field(
        None,
        description="The chat template for chat data and data.template chat_template: null (the tokenizer's "
        f"own), a shipped one ({', '.join(CHAT_TEMPLATES)}), or a path to a .jinja file (relative to the "
        "project root). Its text is hashed into the data, recorded in the prepared manifest and saved in "
        "the adapter's and the exported model's tokenizer.",
    )
    train_on_responses_only: bool = Field(
        True, description="Labels -100 on prompt tokens (loss on responses only)."
    )
    max_seq_len: int = Field(512, ge=8, description="Longer rows are truncated (counted in the report).")
    truncation: Literal["keep_end", "keep_start"] = Field(
        "keep_start",
        description="Preference data over max_seq_len: keep_start cuts the answer's end (then the prompt's end); "
        "keep_end drops the prompt's start first (keeping its end next to the answer), then the answer's end. "
        "A row that cannot keep one answer token is rejected.",
    )
    add_eos: bool = Field(
        True, description="Append the EOS token to every training sequence (if not already there)."
    )
    num_proc: int | None = Field(
        None,
        ge=1,
        description="Processes that format and tokenize rows in prepare (null: one). Not in the data hash: "
        "the output is the same for any value.",
    )
    output_dir: str = "data/prepared"
    rejected_path: str = "data/rejected.jsonl"
    report_path: str = "reports/data.json"

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, populate_by_name=True)

    @field_validator("source", mode="before")
    @classmethod
    def _source_entries(cls, value: Any) -> Any:
        """One clear message per bad entry (pydantic's union errors list every member's failure)."""
        from peft_framework.config.source_entries import check_source_entries

        return check_source_entries(value)

    @model_validator(mode="after")
    def _columns_and_template_fit_kind(self) -> DataConfig:
        problems = []
        allowed = DATA_FIELDS[self.kind]
        for field, column in self.columns.items():
            if field not in allowed:
                problems.append(
                    f"data.columns: unknown field {field!r} for kind {self.kind!r}; "
                    f"allowed: {', '.join(allowed)}"
                )
            elif not column:
                problems.append(f"data.columns.{field}: empty column name")
        if self.kind in ("chat", "vision") and self.template in ("alpaca", "plain"):
            problems.append(
                f"data.template: {self.template!r} cannot format chat data; "
                "allowed for kind 'chat': auto, chat_template"
            )
        problems += self._chat_template_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _chat_template_problems(self) -> list[str]:
        value = self.chat_template
        if value is None:
            return []
        allowed = f"null (the tokenizer's own), {', '.join(CHAT_TEMPLATES)}, or a path to a .jinja file"
        if value not in CHAT_TEMPLATES and not value.endswith(".jinja"):
            return [
                f"data.chat_template: {value!r} is not a shipped template or a .jinja file; allowed: {allowed}"
            ]
        if self.kind in ("text", "classification"):
            return [
                f"data.chat_template: {value!r} is set but data.kind {self.kind!r} uses no chat template; "
                "allowed: null"
            ]
        if self.template in ("alpaca", "plain"):
            return [
                f"data.chat_template: {value!r} is set but data.template is {self.template!r}, which does not "
                "use it; allowed: data.template auto or chat_template, or data.chat_template null"
            ]
        return []
