"""Whether a chat template renders each prefix of a conversation as a prefix of its rendering of the whole,
decided once from its syntax tree.

Per-turn context (turns.py) needs the rendering of the conversation through each trained turn. Where
this module proves the template renders messages[:k+1] as

    the whole rendering up to where the loop's iteration for message k+1 starts,
    then what the template writes after the loop,

those renderings are read from the one rendering of the whole (template.py marks where each iteration
starts and where the loop ends) instead of being rendered again, a render per turn saved.

It holds for a template that is, at its top level:
- a preamble that reads of the messages only the first (`messages[0]`) and whether there are any (`{% if
  messages and ... %}`), the same in every prefix, and may give them another name, whole or less the
  first (`set loop_messages = messages` or `= messages[1:]`, in `if`s on those reads: Llama 2's and
  Gemma's system message), so it writes the same in both renderings and its loop runs over the same
  messages, less the same first one or not;
- one loop over them (`for message in messages`; no filter, no else, not recursive) whose iterations
  read their own message and the loop's past (`loop.index0`, `loop.first`, `loop.previtem`, a
  namespace earlier iterations set) but never what follows (`loop.last`, `loop.length`, `loop.revindex`,
  `loop.nextitem`, the list itself, or the loop printed, which shows its length: `loop.cycle` is only
  called): iteration j then sees the same inputs in both renderings, for every j up to k;
- after the loop, only what depends on the template's variables alone (`add_generation_prompt`,
  `bos_token`): never on a name the template sets (a namespace the loop wrote could differ).
The messages are read nowhere else (but `messages[0]`, anywhere): not by a macro, not by a second loop
(Qwen3's search for the last user query reads them backwards, and is refused). Everything not known to
be one of these is refused, and a refused template renders every prefix as before.

Whether a conversation's first message was left out of the loop is read from each rendering (the loop
iterated once per message, or once less: `MessageLoop.skips`); the rendering through the first message
is then the one up to the loop's first iteration. The rendering of no message at all is read from the
marks only where the template reads nothing of the messages outside its loop (`MessageLoop.reads_first`):
a preamble reading the first message writes otherwise, or fails, without one.
"""

from __future__ import annotations

from typing import NamedTuple

from jinja2 import nodes

# what a loop iteration may ask `loop` for: the loop's past and present. Not what depends on the
# iterations after it (`loop.last`, `loop.length`, `loop.revindex`, `loop.nextitem`), nor anything unknown
PAST = frozenset({"index", "index0", "first", "previtem", "depth", "depth0"})
# the loop's methods, which may only be called: a method as a value prints as `<bound method
# LoopContext.cycle of <LoopContext 2/4>>`, and 4 is the loop's length
METHODS = frozenset({"cycle", "changed"})
LOOP_MARK = "\U0010fffe"  # where an iteration of the message loop starts (removed from the rendering)
END_MARK = "\U0010ffff"  # where the message loop ends


class MessageLoop(NamedTuple):
    """The verdict on a template: where its loop over the messages is (an index into the syntax tree's
    top-level statements), or why it is refused; and how many first messages the loop may leave out."""

    at: int | None
    refusal: str | None
    skips: frozenset[int] = frozenset()
    # whether the template reads the first message, or whether there is one: its rendering of no message
    # at all is then not what it writes before its loop
    reads_first: bool = False


def message_loop(syntax: nodes.Template) -> MessageLoop:
    """The loop over the messages, where the template renders prefixes as prefixes of the whole (module
    docstring)."""
    if any(syntax.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport, nodes.Block))):
        return MessageLoop(None, "it extends, includes or imports other templates")
    body, skips_of, defined, at = syntax.body, {"messages": {0}}, set(), None
    for i, node in enumerate(body):
        if isinstance(node, nodes.For) and isinstance(node.iter, nodes.Name) and node.iter.name in skips_of:
            at = i
            break
        for assign in _preamble_assignments(node):
            left_out = _messages_less_first(assign.node)
            if isinstance(assign.target, nodes.Name) and assign.target.name != "messages" and left_out is not None:
                skips_of.setdefault(assign.target.name, set()).update(left_out)
                defined |= {id(assign.target), id(assign.node), *(id(n) for n in assign.node.find_all(nodes.Name))}
    if at is None:
        return MessageLoop(None, "no loop over the messages at its top level")
    loop = body[at]
    if loop.test is not None or loop.else_ or loop.recursive:
        return MessageLoop(None, "its loop over the messages is filtered, recursive or has an else")
    if loop.iter.name != "messages" and not _always_assigned(body[:at], loop.iter.name):
        # where no `set` ran, the name is whatever the caller passed under it (`tools`, a special token)
        return MessageLoop(None, f"it may loop over `{loop.iter.name}` without having set it")
    if any(macro.name in skips_of for macro in syntax.find_all(nodes.Macro)):
        return MessageLoop(None, "it names a macro like the messages")
    first_reads = _same_in_every_prefix(syntax)
    defined |= first_reads
    for name in syntax.find_all(nodes.Name):
        if name.name in skips_of and id(name) not in defined and name is not loop.iter:
            return MessageLoop(None, f"it reads or sets `{name.name}` outside its one loop over the messages")
    if (why := _reads_ahead(loop.body)) is not None:
        return MessageLoop(None, why)
    skips = frozenset(skips_of[loop.iter.name])
    if len(skips) > 1 and any(isinstance(n, nodes.Break) for s in loop.body for n in _in_loop_scope(s)):
        # iterations are told from marks counted: one fewer could be the first message left out, or the last
        return MessageLoop(None, "its loop over the messages may leave out the first message and may end early")
    set_names = ({n.name for n in syntax.find_all(nodes.Name) if n.ctx != "load"}
                 | {n.name for n in syntax.find_all(nodes.NSRef)} | {m.name for m in syntax.find_all(nodes.Macro)})
    for node in body[at + 1 :]:
        for name in node.find_all(nodes.Name):
            if name.ctx != "load" or name.name in set_names:
                return MessageLoop(None, f"what it writes after the loop depends on `{name.name}`, which it sets")
        if any(node.find_all(nodes.NSRef)):
            return MessageLoop(None, "it sets a namespace after the loop")
    return MessageLoop(at, None, skips, bool(first_reads))


def _preamble_assignments(node: nodes.Node):
    """The `set`s a top-level statement before the loop makes: itself, or inside its `if`s."""
    if isinstance(node, nodes.Assign):
        yield node
    elif isinstance(node, nodes.If):
        for branch in (node.body, *(e.body for e in node.elif_), node.else_):
            for statement in branch:
                yield from _preamble_assignments(statement)


def _messages_less_first(value: nodes.Node) -> set[int] | None:
    """How many first messages `value` leaves out, if it is the messages whole, or less the first
    (`messages[1:]`); None if it is anything else (another name for them too: it may not be set)."""
    if _is_messages(value):
        return {0}
    if (isinstance(value, nodes.Getitem) and isinstance(value.node, nodes.Name) and value.node.name == "messages"
            and isinstance(value.arg, nodes.Slice) and isinstance(value.arg.start, nodes.Const)
            and value.arg.start.value == 1 and value.arg.stop is None and value.arg.step is None):
        return {1}
    return None


def _always_assigned(statements: list[nodes.Node], name: str) -> bool:
    """Whether `statements` set `name` whatever path they take: at their top level, or in every branch of
    an `if` that has an `else`."""
    for statement in statements:
        if isinstance(statement, nodes.Assign) and isinstance(statement.target, nodes.Name) \
                and statement.target.name == name:
            return True
        if isinstance(statement, nodes.If) and statement.else_ and all(
                _always_assigned(branch, name)
                for branch in (statement.body, *(e.body for e in statement.elif_), statement.else_)):
            return True
    return False


def _same_in_every_prefix(syntax: nodes.Template) -> set[int]:
    """The reads of `messages` that give the same in every non-empty prefix of a conversation: its first
    message (`messages[0]`), and whether there are any, as an `if`'s test (or a part of one joined by
    `and`, `or`, `not`). Returns the ids of those `messages` names."""
    found = set()
    for item in syntax.find_all(nodes.Getitem):
        if (_is_messages(item.node) and isinstance(item.arg, nodes.Const) and type(item.arg.value) is int
                and item.arg.value == 0):
            found.add(id(item.node))
    tests = [test for node in syntax.find_all(nodes.If) for test in (node.test, *(e.test for e in node.elif_))]
    while tests:
        test = tests.pop()
        if _is_messages(test):
            found.add(id(test))
        elif isinstance(test, (nodes.And, nodes.Or)):
            tests += [test.left, test.right]
        elif isinstance(test, nodes.Not):
            tests.append(test.node)
    return found


def _is_messages(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "messages" and node.ctx == "load"


def _reads_ahead(statements: list[nodes.Node]) -> str | None:
    """Why the message loop's body depends on iterations after the current one, if it does."""
    for statement in statements:
        for node in _in_loop_scope(statement):
            if isinstance(node, nodes.Getattr) and _is_loop(node.node):
                if node.attr not in PAST | METHODS:
                    return f"its loop over the messages reads `loop.{node.attr}`"
                if node.attr in METHODS and not _called(node, statement):
                    return f"its loop over the messages passes `loop.{node.attr}` on without calling it"
            if _is_loop(node) and not _allowed_loop_use(node, statement):
                return "its loop over the messages passes `loop` on or indexes it"
    return None


def _in_loop_scope(node: nodes.Node):
    """`node` and the nodes under it where `loop` is the message loop: all but the bodies of nested loops
    (their iterable, filter and else are still in the outer loop's scope)."""
    yield node
    for child in node.iter_child_nodes():
        if isinstance(node, nodes.For) and any(child is b for b in node.body):
            continue
        yield from _in_loop_scope(child)


def _is_loop(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "loop"


def _allowed_loop_use(name: nodes.Name, root: nodes.Node) -> bool:
    """Whether `loop` is only asked for an attribute (`loop.index0`, `loop.cycle(...)`): as a value of its
    own, passed to a macro or indexed (`loop['last']`), it could be asked anything."""
    return any(isinstance(n, nodes.Getattr) and n.node is name for n in root.find_all(nodes.Getattr))


def _called(method: nodes.Getattr, root: nodes.Node) -> bool:
    """Whether `method` (`loop.cycle`) is called where it is named: passed on, its caller could print it."""
    return any(call.node is method for call in root.find_all(nodes.Call))


def with_loop_marks(syntax: nodes.Template, at: int) -> nodes.Template:
    """`syntax` (a fresh parse: it is changed) writing LOOP_MARK where each iteration of its loop at
    `at` starts and END_MARK where the loop ends."""
    loop = syntax.body[at]
    loop.body.insert(0, nodes.Output([nodes.TemplateData(LOOP_MARK)]).set_lineno(loop.lineno))
    syntax.body.insert(at + 1, nodes.Output([nodes.TemplateData(END_MARK)]).set_lineno(loop.lineno))
    return syntax
