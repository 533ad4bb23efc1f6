"""Probing a chat template once: the text that opens an assistant turn (its header) and the control
token that closes it, found by rendering a made-up exchange with and without the generation prompt."""

from __future__ import annotations

import re

from .records import TemplateFacts
from .template import ChatTemplate, TemplateRenderError

_PROBE_USER = "sftdata probe question 4f1c"
_PROBE_ASSISTANT = "sftdata probe answer 9b2e"


def probe_template(template: ChatTemplate, special_pattern: re.Pattern | None) -> TemplateFacts:
    user = {"role": "user", "content": _PROBE_USER}
    assistant = {"role": "assistant", "content": _PROBE_ASSISTANT}
    try:
        full = template.render([user, assistant]).text
    except TemplateRenderError as err:
        raise TemplateRenderError(f"the chat template cannot render a user/assistant exchange: {err}") from err
    answer_at = full.rfind(_PROBE_ASSISTANT)
    if answer_at < 0:
        raise TemplateRenderError("the chat template does not render assistant message content")
    after = full[answer_at + len(_PROBE_ASSISTANT) :]
    eot_match = special_pattern.search(after) if special_pattern else None
    end_of_turn = eot_match.group() if eot_match else None

    header = ""
    try:
        prompt = template.render([user]).text
        asking = template.render([user], add_generation_prompt=True).text
        if asking.startswith(prompt):
            header = asking[len(prompt) :]
    except TemplateRenderError:
        pass
    if not header.strip() and special_pattern:
        # no generation prompt (Llama-2, Mistral): the model speaks right after the last control token
        # between the question and the answer, e.g. `[/INST]`
        between = full[full.rfind(_PROBE_USER) + len(_PROBE_USER) : answer_at]
        found = list(special_pattern.finditer(between))
        header = found[-1].group() if found else ""
    return TemplateFacts(header=header, end_of_turn=end_of_turn)
