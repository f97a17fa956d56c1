"""``chat_template:``: ``auto``, a built-in name, or a literal Jinja template (mergekit 0.1.5 semantics).

* ``auto``: the template most input models share (ties: the first in spec order); none if no input has one.
* a name: one of :data:`NAMED_TEMPLATES` (mergekit ships these five names). The templates are our own;
  they render what mergekit's render, except where mergekit's output is broken (see the notes below).
* anything else containing ``{`` and at least 20 characters is taken as a Jinja template.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

from hubmerge.errors import SpecError

logger = logging.getLogger(__name__)

_CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Llama 3 turns; each turn ends with a newline after <|eot_id|>, as mergekit's template renders it.
_LLAMA3 = (
    "{%- for message in messages -%}"
    "{%- if loop.first -%}{{- bos_token -}}{%- endif -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim)"
    " + '<|eot_id|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

_MISTRAL = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set turns = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for message in turns -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set prefix = system_message + '\\n\\n' if loop.first and system_message is defined else '' -%}"
    "{{- ' [INST] ' + prefix + message['content'] + ' [/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- ' ' + message['content'] + eos_token -}}"
    "{%- else -%}"
    "{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial "
    "optional system message!') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# Alpaca: the last system message, a blank line, then "### Instruction/Input/Response" blocks separated by
# blank lines. mergekit's template omits the blank line before the generation prompt ("...hi### Response:");
# ours keeps the format's separator there.
_ALPACA = (
    "{%- set systems = messages | selectattr('role', 'equalto', 'system') | list -%}"
    "{{- (systems | last).content | trim if systems else '' -}}{{- '\\n\\n' -}}"
    "{%- set headers = {'user': '### Instruction:', 'assistant': '### Response:', 'user_context': '### Input:'} -%}"
    "{%- set turns = messages | selectattr('role', 'in', ['user', 'assistant', 'user_context']) | list -%}"
    "{%- for message in turns -%}"
    "{%- if not loop.first -%}{{- '\\n\\n' -}}{%- endif -%}"
    "{{- headers[message['role']] + '\\n' + (message['content'] | trim) -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}"
    "{{- '\\n\\n### Response:\\n' -}}{%- endif -%}"
)

# EXAONE 3: [|role|]content, user turns end with a newline, others with [|endofturn|] and a newline; an empty
# system turn first when there is none. mergekit's template leaks its own indentation into the prompt.
_EXAONE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}{{- '[|system|][|endofturn|]\\n' -}}{%- endif -%}"
    "{{- '[|' + message['role'] + '|]' + message['content'] -}}"
    "{{- '\\n' if message['role'] == 'user' else '[|endofturn|]\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '[|assistant|]' -}}{%- endif -%}"
)

NAMED_TEMPLATES = {"alpaca": _ALPACA, "chatml": _CHATML, "exaone": _EXAONE, "llama3": _LLAMA3,
                   "mistral": _MISTRAL}


def looks_like_name(value: str) -> bool:
    return len(value) < 256 and "\n" not in value and "{" not in value


def check_chat_template(value: str | None) -> None:
    """Validation-time check of the spec value (no model needed)."""
    if value is None or value == "auto" or value in NAMED_TEMPLATES:
        return
    if looks_like_name(value):
        raise SpecError(f"unknown chat template name {value!r}", path="chat_template",
                        hint="use auto, one of " + ", ".join(sorted(NAMED_TEMPLATES)) + ", or a Jinja template")
    if len(value) < 20:
        raise SpecError(f"chat template {value!r} is too short to be a Jinja template", path="chat_template")


def resolve_chat_template(value: str | None, input_templates: Callable[[], list[str | dict | None]]) -> str | None:
    """The template text to write, or None. ``input_templates`` is only called for ``auto``."""
    check_chat_template(value)
    if value is None:
        return None
    if value == "auto":
        found = []
        for template in input_templates():
            if isinstance(template, dict):
                template = template.get("default")
            if template:
                found.append(template.strip())
        if not found:
            logger.info("chat_template: auto, but no input model has a chat template; none written")
            return None
        chosen = Counter(found).most_common(1)[0][0]
        logger.info("chat_template: auto chose the template %d of %d input(s) use", found.count(chosen), len(found))
        return chosen
    return NAMED_TEMPLATES.get(value, value)
