"""Whether a chat template renders each prefix of a conversation as a prefix of its rendering of the whole,
decided once from its syntax tree.

Per-turn context (turns.py) needs the rendering of the conversation through each trained turn. Where
this module proves the template renders messages[:k+1] as

    the whole rendering up to where the loop's iteration for message k+1 starts,
    then what the template writes after the loop,

those renderings are read from the one rendering of the whole (template.py marks where each iteration
starts and where the loop ends) instead of being rendered again, a render per turn saved.

It holds for a template that is, at its top level:
- a preamble that never reads the messages (it may give them another name: `set loop_messages =
  messages`), so it writes the same in both renderings;
- one loop over them (`for message in messages`; no filter, no else, not recursive) whose iterations
  read their own message and the loop's past (`loop.index0`, `loop.first`, `loop.previtem`, a
  namespace earlier iterations set) but never what follows (`loop.last`, `loop.length`, `loop.revindex`,
  `loop.nextitem`, the list itself, or the loop printed, which shows its length: `loop.cycle` is only
  called): iteration j then sees the same inputs in both renderings, for every j up to k;
- after the loop, only what depends on the template's variables alone (`add_generation_prompt`,
  `bos_token`): never on a name the template sets (a namespace the loop wrote could differ).
The messages are read nowhere else: not by a macro, not by a second loop (Qwen3's search for the last
user query reads them backwards, and is refused). Everything not known to be one of these is refused,
and a refused template renders every prefix as before.
"""

from __future__ import annotations

from jinja2 import nodes

# what a loop iteration may ask `loop` for: the loop's past and present. Not what depends on the
# iterations after it (`loop.last`, `loop.length`, `loop.revindex`, `loop.nextitem`), nor anything unknown
PAST = frozenset({"index", "index0", "first", "previtem", "depth", "depth0"})
# the loop's methods, which may only be called: a method as a value prints as `<bound method
# LoopContext.cycle of <LoopContext 2/4>>`, and 4 is the loop's length
METHODS = frozenset({"cycle", "changed"})
LOOP_MARK = "\U0010fffe"  # where an iteration of the message loop starts (removed from the rendering)
END_MARK = "\U0010ffff"  # where the message loop ends


def message_loop(syntax: nodes.Template) -> tuple[int | None, str | None]:
    """The index in `syntax.body` of the loop over the messages, where the template renders prefixes as
    prefixes of the whole (module docstring); else None and why not."""
    if any(syntax.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport, nodes.Block))):
        return None, "it extends, includes or imports other templates"
    body, aliases, defined, at = syntax.body, {"messages"}, set(), None
    for i, node in enumerate(body):
        if (isinstance(node, nodes.Assign) and isinstance(node.target, nodes.Name)
                and isinstance(node.node, nodes.Name) and node.node.name in aliases):
            aliases.add(node.target.name)
            defined |= {id(node.target), id(node.node)}
        elif isinstance(node, nodes.For) and isinstance(node.iter, nodes.Name) and node.iter.name in aliases:
            at = i
            break
    if at is None:
        return None, "no loop over the messages at its top level"
    loop = body[at]
    if loop.test is not None or loop.else_ or loop.recursive:
        return None, "its loop over the messages is filtered, recursive or has an else"
    for name in syntax.find_all(nodes.Name):
        if name.name in aliases and id(name) not in defined and name is not loop.iter:
            return None, f"it reads or sets `{name.name}` outside its one loop over the messages"
    if (why := _reads_ahead(loop.body)) is not None:
        return None, why
    set_names = ({n.name for n in syntax.find_all(nodes.Name) if n.ctx != "load"}
                 | {n.name for n in syntax.find_all(nodes.NSRef)} | {m.name for m in syntax.find_all(nodes.Macro)})
    for node in body[at + 1 :]:
        for name in node.find_all(nodes.Name):
            if name.ctx != "load" or name.name in set_names:
                return None, f"what it writes after the loop depends on `{name.name}`, which it sets"
        if any(node.find_all(nodes.NSRef)):
            return None, "it sets a namespace after the loop"
    return at, None


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
