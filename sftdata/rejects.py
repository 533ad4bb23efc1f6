"""Why a record was not written. Every input record ends up in a document or in rejects.jsonl."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Reason(str, Enum):
    MALFORMED = "malformed_record"  # bad JSON, missing/unknown role, non-text content, unknown format
    SPECIAL_TOKEN_IN_CONTENT = "special_token_in_content"
    TEMPLATE_ERROR = "template_error"  # the chat template raised on this conversation
    UNRENDERED_FIELD = "unrendered_field"  # the template leaves out a message field (--unrendered reject)
    PROMPT_MISMATCH = "prompt_mismatch"  # a turn's rendering does not continue the prompt it follows
    MASK_VERIFICATION_FAILED = "mask_verification_failed"
    NO_TRAINABLE_TOKENS = "no_trainable_tokens"
    TOO_LONG = "too_long"


@dataclass(slots=True)
class Reject:
    source_id: int
    reason: Reason
    detail: str

    def to_json(self) -> dict:
        return {"source_id": self.source_id, "reason": self.reason.value, "detail": self.detail}


class RecordError(ValueError):
    """A problem with one record: the build rejects it and goes on."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def __reduce__(self):
        # a bad line is read as a RecordError in place of its record and travels to a pool worker with
        # its batch: pickling must rebuild it from both arguments (Exception pickles `args` alone)
        return type(self), (self.reason, self.detail)
