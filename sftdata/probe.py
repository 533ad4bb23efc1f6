"""Probing a chat template once: the text that opens an assistant turn (its header), the control token that
closes it, what the template writes after the last turn, and the modes its generation prompt has, found by
rendering a made-up exchange with and without the generation prompt."""

from __future__ import annotations

import re

from jinja2 import meta, nodes

from .records import TemplateFacts
from .template import ChatTemplate, TemplateRenderError

_PROBE_USER = "sftdata probe question 4f1c"
_PROBE_ASSISTANT = "sftdata probe answer 9b2e"
_CALL_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt"})  # what every render passes


def _switch_values(template: ChatTemplate) -> dict[str, list]:
    """Variables the template reads that no render passes (`enable_thinking`, `reasoning_effort`), each
    with the values worth trying: true, false, and every string it is compared with."""
    names = meta.find_undeclared_variables(template.syntax) - _CALL_VARIABLES - set(template.base_context)
    values: dict[str, list] = {name: [True, False] for name in sorted(names)}
    for compare in template.syntax.find_all(nodes.Compare):
        operands = [compare.expr, *(op.expr for op in compare.ops)]
        named = [o.name for o in operands if isinstance(o, nodes.Name) and o.name in values]
        constants = [o.value for o in operands if isinstance(o, nodes.Const) and isinstance(o.value, str)]
        for name in named:
            values[name] += [c for c in constants if c not in values[name]]
    return values


def _generation_prompt(template: ChatTemplate, messages: list[dict], mode: dict) -> tuple[str, str] | None:
    """(rendering without, generation prompt after it) under `mode`; None where the template raises."""
    try:
        prompt = template.render(messages, mode=mode).text
        asking = template.render(messages, add_generation_prompt=True, mode=mode).text
    except TemplateRenderError:
        return None
    return prompt, asking[len(prompt):] if asking.startswith(prompt) else ""


def _modes(template: ChatTemplate, messages: list[dict], default: tuple[str, str] | None) -> tuple[dict, ...]:
    """The default mode, then one setting per distinct generation prompt that leaves the rest of the
    rendering as it is (a setting that changes the system text, like a reasoning effort, is no mode of the
    prompt: documents are rendered in the template's default mode)."""
    if default is None:
        return ({},)
    modes, seen = [{}], {default[1]}
    for name, values in _switch_values(template).items():
        for value in values:
            found = _generation_prompt(template, messages, {name: value})
            if found and found[0] == default[0] and found[1] not in seen:
                seen.add(found[1])
                modes.append({name: value})
    return tuple(modes)


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
    trailer = after[eot_match.end():] if eot_match else ""

    default = _generation_prompt(template, [user], {})
    header = default[1] if default else ""
    if not header.strip() and default and special_pattern and full.startswith(default[0]):
        # a template that writes the assistant header after every conversation, asked or not (Meta Llama 3
        # Instruct's): the header is what follows the user's end-of-turn token
        user_end = special_pattern.search(default[0], default[0].rfind(_PROBE_USER))
        if user_end and user_end.end() < len(default[0]):
            header = default[0][user_end.end():]
    if not header.strip() and special_pattern:
        # no generation prompt (Llama-2, Mistral): the model speaks right after the last control token
        # between the question and the answer, e.g. `[/INST]`
        between = full[full.rfind(_PROBE_USER) + len(_PROBE_USER) : answer_at]
        found = list(special_pattern.finditer(between))
        header = found[-1].group() if found else ""
    return TemplateFacts(header=header, end_of_turn=end_of_turn, modes=_modes(template, [user], default),
                         trailer=trailer)
