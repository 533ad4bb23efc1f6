"""Whether a chat template passes message text through untouched, decided once from its syntax tree.

Span finding renders a conversation twice: as is, and with sentinels around each message field
(spans.py). When the template only copies field text into its output (as is, trimmed, concatenated;
never compared, measured, searched or split), the rendering with sentinels, once they are removed, is
the rendering as is, and one rendering does. `refusal` proves that for a template or says why it cannot:
it interprets the Jinja syntax tree over a few kinds of values, and refuses whatever it does not know.
A refused template is rendered twice per conversation, as before.

The kinds of values:
- clean: holds no message field text (roles, tools, special tokens, numbers, loop counters);
- field: a message's `content` or `reasoning_content` as given. Wrapping a non-empty field in sentinels
  keeps it a non-empty string and leaves an empty one as it is, so its truth and its type are the same;
- text: a string built from field text (trimmed, concatenated): it may only go on into the output or into
  more text, or be asked whether it is a string or none. Not its truth: a field of only whitespace,
  trimmed, is empty, but not with its sentinels;
- message, messages: one message, or a list of them; taken apart only by their keys and indices.
Names are tracked without regard to scope or order (each name holds the join of everything assigned to
it), so the analysis runs to a fixed point and is conservative. What could alias a value out of sight
is kept clean or refused: a namespace attribute may only be assigned clean values, a macro is only
called (never passed on), `loop` is never assigned, and the sandbox's fallback from `x[key]` to an
attribute of a dict or list is refused.

A template could also forge the sentinel pair of a field it leaves out by writing characters of the
sentinels' planes: constants holding them are refused, and so is every way found to compute one (`%`
on strings, the `format` filter, methods outside a short list such as `decode` and `translate`). Span
finding still takes a single rendering only where each pair encloses exactly its own field's text.
`lipsum` and `random` are refused too: a template whose output differs per call cannot be rendered
once for two.
"""

from __future__ import annotations

import re

from jinja2 import nodes

CLEAN, FIELD, TEXT, MESSAGE, MESSAGES = "clean", "field", "text", "message", "messages"
FIELD_KEYS = frozenset({"content", "reasoning_content", "thinking", "reasoning"})  # what spans.template_messages
# wraps (tool calls aside)
FIELD_TESTS = frozenset({"string", "none", "defined", "undefined"})  # answered alike with sentinels
CONTAINER_TESTS = frozenset({"defined", "undefined", "none", "mapping", "sequence", "iterable"})
PRIVATE_PLANES = re.compile("[\U000F0000-\U0010FFFF]")  # the sentinels' (spans.py) and generation markers'


# calls on clean values: none of these makes a character that is not in its inputs (a computed one, such
# as `encode(...).decode('unicode_escape')`, `translate` or `%c`, could forge a field's sentinels)
SAFE_METHODS = frozenset("strip lstrip rstrip upper lower title capitalize swapcase startswith endswith split "
                         "rsplit splitlines partition rpartition replace join count find rfind index rindex "
                         "isdigit isalpha isalnum isspace islower isupper items keys values get append extend "
                         "pop copy next reset current".split())
SAFE_GLOBALS = frozenset({"raise_exception", "strftime_now", "namespace", "range", "dict", "cycler", "joiner"})


def _a_number(node: nodes.Node) -> bool:
    """The forms `%` takes in chat templates as arithmetic: `loop.index0 % 2`, `messages | length % 2`."""
    return ((isinstance(node, nodes.Const) and isinstance(node.value, (int, float)))
            or (isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "loop")
            or (isinstance(node, nodes.Filter) and node.name in ("length", "count")))


class _Refused(Exception):
    pass


def refusal(template: nodes.Template) -> str | None:
    """None if the template passes message text through untouched; otherwise why that is not proven."""
    analysis = _Analysis()
    try:
        for _ in range(32):  # kinds only grow, through a handful of names: a fixed point comes fast
            analysis.changed = False
            analysis.statements(template.body)
            if not analysis.changed:
                return None
        return "its names did not settle"
    except _Refused as why:
        return str(why)


def _join(a: str, b: str) -> str:
    if a == b or b == CLEAN:
        return a
    if a == CLEAN:
        return b
    if {a, b} <= {FIELD, TEXT}:
        return TEXT
    raise _Refused(f"a value is either {a} or {b}")


def _tainted(kind: str) -> bool:
    return kind in (FIELD, TEXT)


def _arguments(node: nodes.Call | nodes.Filter | nodes.Test) -> list[nodes.Node]:
    return [*node.args, *node.kwargs, *(a for a in (node.dyn_args, node.dyn_kwargs) if a is not None)]


def _message_key(key: str) -> str:
    if key == "tool_calls":
        raise _Refused("it renders tool calls")
    return FIELD if key in FIELD_KEYS else CLEAN


class _Analysis:
    def __init__(self):
        self.names: dict[str, str] = {"messages": MESSAGES}
        self.macros: dict[str, str] = {}  # what each macro outputs
        self.changed = False

    def bind(self, name: str, kind: str) -> None:
        if name == "loop" or name in self.macros:
            raise _Refused(f"it assigns `{name}`")
        old = self.names.get(name, CLEAN)
        new = _join(old, kind)
        if new != old:
            self.names[name], self.changed = new, True

    # -- statements: each returns the kind of what it outputs -------------------------------------------

    def statements(self, body: list[nodes.Node]) -> str:
        out = CLEAN
        for node in body:
            out = _join(out, self.statement(node))
        return out

    def statement(self, node: nodes.Node) -> str:
        if isinstance(node, nodes.Output):
            out = CLEAN
            for child in node.nodes:
                kind = self.expr(child)
                if kind in (MESSAGE, MESSAGES):
                    raise _Refused("it outputs a message as a whole")
                out = _join(out, TEXT if _tainted(kind) else CLEAN)
            return out
        if isinstance(node, nodes.If):
            self.truth(node.test)
            out = self.statements(node.body)
            for branch in node.elif_:
                self.truth(branch.test)
                out = _join(out, self.statements(branch.body))
            return _join(out, self.statements(node.else_))
        if isinstance(node, nodes.For):
            return self.loop(node)
        if isinstance(node, nodes.Assign):
            self.assign(node.target, self.expr(node.node))
            return CLEAN
        if isinstance(node, nodes.AssignBlock):
            if node.filter is not None:
                raise _Refused("it filters a block it assigns")
            self.assign(node.target, TEXT if _tainted(self.statements(node.body)) else CLEAN)
            return CLEAN
        if isinstance(node, nodes.Macro):
            for arg in node.args:
                self.bind(arg.name, CLEAN)  # every call must pass clean arguments (see `call`)
            for default in node.defaults:
                self.clean(default, "a macro's default")
            old = self.macros.get(node.name)
            new = _join(old or CLEAN, self.statements(node.body))
            if new != old:
                self.macros[node.name], self.changed = new, True
            return CLEAN
        if isinstance(node, nodes.ExprStmt):
            self.clean(node.node, "a `do` statement")
            return CLEAN
        if isinstance(node, nodes.With):
            for target, value in zip(node.targets, node.values):
                self.assign(target, self.expr(value))
            return self.statements(node.body)
        if isinstance(node, nodes.Scope):
            return self.statements(node.body)
        if isinstance(node, (nodes.Continue, nodes.Break)):
            return CLEAN
        raise _Refused(f"it uses `{type(node).__name__}`, which this analysis does not know")

    def loop(self, node: nodes.For) -> str:
        items = self.expr(node.iter)
        if items not in (CLEAN, MESSAGES):
            raise _Refused(f"it iterates over {items}")
        if node.recursive:
            raise _Refused("it has a recursive loop")
        self.assign(node.target, MESSAGE if items == MESSAGES else CLEAN)
        if node.test is not None:
            self.truth(node.test)
        return _join(self.statements(node.body), self.statements(node.else_))

    def assign(self, target: nodes.Node, kind: str) -> None:
        if isinstance(target, nodes.Name):
            self.bind(target.name, kind)
        elif isinstance(target, nodes.NSRef):
            if kind != CLEAN:  # a namespace can be aliased out of this analysis' sight: it holds clean values
                raise _Refused(f"it keeps {kind} in a namespace")
        elif isinstance(target, nodes.Tuple) and kind == CLEAN:
            for item in target.items:
                self.assign(item, CLEAN)
        else:
            raise _Refused(f"it unpacks {kind} into several names")

    # -- expressions ----------------------------------------------------------------------------------

    def clean(self, node: nodes.Node, what: str) -> None:
        kind = self.expr(node)
        if kind != CLEAN:
            raise _Refused(f"{what} is given {kind}")

    def truth(self, node: nodes.Node) -> None:
        """Tests whose answer is the same with and without sentinels."""
        if isinstance(node, (nodes.And, nodes.Or)):
            self.truth(node.left)
            self.truth(node.right)
        elif isinstance(node, nodes.Not):
            self.truth(node.node)
        elif self.expr(node) == TEXT:
            raise _Refused("it tests the truth of text built from a field")

    def expr(self, node: nodes.Node) -> str:
        if isinstance(node, (nodes.Const, nodes.TemplateData)):
            value = node.data if isinstance(node, nodes.TemplateData) else node.value
            if isinstance(value, str) and PRIVATE_PLANES.search(value):  # escapes, too: decoded here
                raise _Refused("its text holds characters of the sentinels' private-use planes")
            return CLEAN
        if isinstance(node, nodes.Name):
            # the loop (its items may be messages) is read only through its attributes (`member`), and a
            # macro is only called (`call`): passed on, an alias would escape this analysis
            if node.name == "loop" or node.name in self.macros:
                raise _Refused(f"it passes on `{node.name}` as a whole")
            return self.names.get(node.name, CLEAN)
        if isinstance(node, (nodes.Getattr, nodes.Getitem)):
            return self.member(node)
        if isinstance(node, nodes.Call):
            return self.call(node)
        if isinstance(node, nodes.Filter):
            return self.filter(node)
        if isinstance(node, nodes.Test):
            return self.test(node)
        if isinstance(node, (nodes.Add, nodes.Concat)):
            operands = [node.left, node.right] if isinstance(node, nodes.Add) else node.nodes
            kinds = [self.expr(n) for n in operands]
            if MESSAGE in kinds or MESSAGES in kinds:
                raise _Refused("it concatenates a message as a whole")
            return TEXT if any(map(_tainted, kinds)) else CLEAN
        if isinstance(node, (nodes.And, nodes.Or)):
            self.truth(node.left)
            return _join(self.expr(node.left), self.expr(node.right))
        if isinstance(node, nodes.Not):
            self.truth(node.node)
            return CLEAN
        if isinstance(node, nodes.CondExpr):
            self.truth(node.test)
            return _join(self.expr(node.expr1), self.expr(node.expr2) if node.expr2 is not None else CLEAN)
        if isinstance(node, nodes.Compare):
            self.clean(node.expr, "a comparison")
            for op in node.ops:
                self.clean(op.expr, "a comparison")
            return CLEAN
        if isinstance(node, nodes.Mod) and not _a_number(node.left):
            raise _Refused("it formats with `%`, which could make characters out of sight")
        if isinstance(node, (nodes.BinExpr, nodes.UnaryExpr)):
            for child in node.iter_child_nodes():
                self.clean(child, f"`{node.operator}`")
            return CLEAN
        if isinstance(node, (nodes.List, nodes.Tuple, nodes.Dict, nodes.Pair, nodes.Keyword, nodes.Slice)):
            for child in node.iter_child_nodes():
                self.clean(child, f"a {type(node).__name__.lower()}")
            return CLEAN
        raise _Refused(f"it uses `{type(node).__name__}`, which this analysis does not know")

    def member(self, node: nodes.Getattr | nodes.Getitem) -> str:
        key = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem):
            if isinstance(node.arg, nodes.Const):
                key = node.arg.value
            else:
                self.expr(node.arg) if isinstance(node.arg, nodes.Slice) else self.clean(node.arg, "an index")
        if isinstance(node.node, nodes.Name) and node.node.name == "loop":
            if key in ("previtem", "nextitem") or not isinstance(node, nodes.Getattr):
                raise _Refused("it reads the loop's items")
            return CLEAN
        base = self.expr(node.node)
        if base == CLEAN:
            return CLEAN
        # the sandbox looks `x[key]` up as an attribute where the key is missing: `m['items']` is a method
        if isinstance(key, str) and hasattr(dict if base == MESSAGE else list, key):
            raise _Refused(f"it reads `{key}` of {base}")
        if base == MESSAGES and isinstance(node, nodes.Getitem) and not isinstance(key, str):
            return MESSAGES if isinstance(node.arg, nodes.Slice) else MESSAGE
        if base == MESSAGE and isinstance(key, str):
            return _message_key(key)
        raise _Refused(f"it takes a part of {base} (`{key if key is not None else '[...]'}`)")

    def call(self, node: nodes.Call) -> str:
        callee = node.node
        if isinstance(callee, nodes.Getattr) and isinstance(callee.node, nodes.Name) and callee.node.name == "loop":
            if callee.attr not in ("cycle", "changed"):
                raise _Refused(f"it calls `loop.{callee.attr}`")
            for child in _arguments(node):
                self.clean(child, f"loop.{callee.attr}")
            return CLEAN
        if isinstance(callee, nodes.Getattr):
            owner = self.expr(callee.node)
            # only a whole field: in text built from one, a field of only whitespace keeps its sentinels
            # between the whitespace before it and after it, where strip() would take it all
            if owner == FIELD and callee.attr == "strip" and not _arguments(node):
                return TEXT
            if (owner == MESSAGE and callee.attr == "get" and _arguments(node) == node.args  # positional only
                    and 1 <= len(node.args) <= 2 and isinstance(node.args[0], nodes.Const)):
                if len(node.args) == 2:
                    self.clean(node.args[1], "a default")
                return _message_key(node.args[0].value)
            if owner == CLEAN and callee.attr not in SAFE_METHODS:
                raise _Refused(f"it calls `.{callee.attr}`, which could make characters out of sight")
        elif not (isinstance(callee, nodes.Name) and (callee.name in self.macros or callee.name in SAFE_GLOBALS)):
            raise _Refused(f"it calls `{getattr(callee, 'name', type(callee).__name__)}`")
        macro = isinstance(callee, nodes.Name) and callee.name in self.macros
        for child in node.iter_child_nodes():
            if not (macro and child is callee):  # the callee too: a field's `split`, `startswith` are refused
                self.clean(child, "a call")
        return self.macros[callee.name] if macro else CLEAN

    def filter(self, node: nodes.Filter) -> str:
        if node.name in ("format", "random"):
            raise _Refused(f"it applies `{node.name}`, which could make characters out of sight or differ per call")
        value = self.expr(node.node) if node.node is not None else CLEAN
        for child in _arguments(node):
            self.clean(child, f"filter `{node.name}`")
        if value == CLEAN:
            return CLEAN
        if value == FIELD and node.name == "trim" and not _arguments(node):  # a whole field only, as strip()
            return TEXT
        if value == MESSAGES and node.name in ("length", "count"):
            return CLEAN
        if value == MESSAGES and node.name in ("first", "last"):
            return MESSAGE
        raise _Refused(f"it applies `{node.name}` to {value}")

    def test(self, node: nodes.Test) -> str:
        value = self.expr(node.node)
        for child in _arguments(node):
            self.clean(child, f"test `{node.name}`")
        if (value == CLEAN or (_tainted(value) and node.name in FIELD_TESTS)
                or (value in (MESSAGE, MESSAGES) and node.name in CONTAINER_TESTS)):
            return CLEAN
        raise _Refused(f"it tests whether {value} is `{node.name}`")
