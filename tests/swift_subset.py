"""An evaluator for the small Swift subset ios_demo/Sources/CDXKit/ClipTokenizer.swift is written in.

There is no Swift compiler on Linux, so tests/test_ios_demo.py runs the app's tokenizer functions from their
tree-sitter parse tree with Swift's semantics where they matter: Int / UInt32 / UInt8 are distinct types (a literal
takes the type it meets; mixing two typed integers is refused, as Swift would not compile it; overflow and
out-of-range indexes trap), arrays are values (copied on binding), a dictionary lookup is Optional and dictionary
iteration order is not defined (it is shuffled here, so code that depends on it fails), `!x.f(y)` negates the call
(tree-sitter parses it as `(!x.f)(y)`), Strings are sequences of Unicode scalars that may only be used through
`unicodeScalars`, `utf8`, `+`, `==` and as dictionary keys (a Character-level operation is refused: Swift's Characters
are grapheme clusters). Mixed binary operators must be parenthesised; anything else unknown raises `Unsupported`
instead of being guessed. Unicode properties come from Python's `unicodedata` (Unicode 14 on Python 3.11; iOS ships a
newer table — the vectors use characters both classify alike).
"""

from __future__ import annotations

import random
import unicodedata
from typing import Any

SWIFT_CATEGORY = {
    "Lu": "uppercaseLetter", "Ll": "lowercaseLetter", "Lt": "titlecaseLetter", "Lm": "modifierLetter",
    "Lo": "otherLetter", "Mn": "nonspacingMark", "Mc": "spacingMark", "Me": "enclosingMark", "Nd": "decimalNumber",
    "Nl": "letterNumber", "No": "otherNumber", "Pc": "connectorPunctuation", "Pd": "dashPunctuation",
    "Ps": "openPunctuation", "Pe": "closePunctuation", "Pi": "initialPunctuation", "Pf": "finalPunctuation",
    "Po": "otherPunctuation", "Sm": "mathSymbol", "Sc": "currencySymbol", "Sk": "modifierSymbol", "So": "otherSymbol",
    "Zs": "spaceSeparator", "Zl": "lineSeparator", "Zp": "paragraphSeparator", "Cc": "control", "Cf": "format",
    "Cs": "surrogate", "Co": "privateUse", "Cn": "unassigned",
}
INT_RANGES = {"Int": (-(2**63), 2**63 - 1), "UInt32": (0, 2**32 - 1), "UInt8": (0, 255)}
ASSOCIATIVE = {"+", "*", "&&", "||"}
BINARY = {"additive_expression", "multiplicative_expression", "comparison_expression", "equality_expression",
          "conjunction_expression", "disjunction_expression", "infix_expression"}


class Unsupported(AssertionError):
    """Swift the evaluator does not know (or Swift would refuse): the test fails instead of guessing."""


class SwiftTrap(AssertionError):
    """What would crash the app at run time (overflow, index out of range)."""


class SwiftThrow(Exception):
    """A Swift `throw`; the message is the thrown error's text."""


class Nil:
    def __repr__(self) -> str:
        return "nil"


NIL = Nil()


class Num:
    """A typed integer ("lit" = an integer literal that has not met its type yet)."""

    def __init__(self, kind: str, value: int):
        if kind != "lit":
            lo, hi = INT_RANGES[kind]
            if not lo <= value <= hi:
                raise SwiftTrap(f"{kind} overflow: {value}")
        self.kind, self.value = kind, value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Num) and self.value == other.value and compatible(self, other)

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"{self.kind}({self.value})"


class Scalar:
    def __init__(self, value: int):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scalar) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("scalar", self.value))


class EnumCase:
    def __init__(self, name: str):
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumCase) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("case", self.name))


class Instance:
    """A struct value: stored properties by Swift name."""

    def __init__(self, type_name: str, fields: dict[str, Any]):
        self.type_name, self.fields = type_name, fields


class ScalarView(list):
    """String.UnicodeScalarView under construction."""


def compatible(a: Num, b: Num) -> bool:
    return a.kind == b.kind or "lit" in (a.kind, b.kind)


class Node:
    """A parse-tree node copied out of tree-sitter once: attribute reads on py-tree-sitter nodes build new objects
    each time, which made evaluation ~5x slower."""

    __slots__ = ("_named", "_str", "children", "is_named", "prev_sibling", "start_byte", "text", "type")

    def __init__(self, ts_node: Any, prev: Node | None = None):
        self.type, self.text, self.is_named = ts_node.type, ts_node.text, ts_node.is_named
        self.start_byte, self.prev_sibling = ts_node.start_byte, prev
        self._str = self.text.decode()
        self._named: dict[str, list[Node]] = {}
        children: list[Node] = []
        for child in ts_node.children:
            children.append(Node(child, children[-1] if children else None))
        self.children = children


def text(node: Any) -> str:
    return node._str if isinstance(node, Node) else node.text.decode()


def named(node: Any, kind: str) -> list[Any]:
    if isinstance(node, Node):
        hit = node._named.get(kind)
        if hit is None:
            hit = node._named[kind] = [c for c in node.children if c.type == kind]
        return hit
    return [c for c in node.children if c.type == kind]


def walk(node: Any):
    yield node
    for child in node.children:
        yield from walk(child)


def type_name(node: Any | None) -> str | None:
    """A type node as a string: Int, [UInt32], [String: Int], Int? (None without a node)."""
    if node is None:
        return None
    if node.type == "type_annotation":
        return type_name(next(c for c in node.children if c.is_named))
    if node.type == "user_type":
        return ".".join(text(c) for c in node.children if c.type == "type_identifier")
    if node.type == "array_type":
        return f"[{type_name(next(c for c in node.children if c.is_named))}]"
    if node.type == "dictionary_type":
        key, value = [c for c in node.children if c.is_named]
        return f"[{type_name(key)}: {type_name(value)}]"
    if node.type == "optional_type":
        return type_name(next(c for c in node.children if c.is_named)) + "?"
    raise Unsupported(f"type {node.type}: {text(node)}")


def copy(value: Any) -> Any:
    """Swift value semantics: arrays/dictionaries are copied when bound to a new name."""
    if isinstance(value, ScalarView):
        return ScalarView(value)
    if isinstance(value, list):
        return [copy(v) for v in value]
    if isinstance(value, dict):
        return {k: copy(v) for k, v in value.items()}
    return value


def coerce(value: Any, kind: str | None) -> Any:
    """Give literals the declared type; check typed integers against it."""
    if kind is None:
        if isinstance(value, Num) and value.kind == "lit":
            return Num("Int", value.value)  # Swift's default integer literal type
        return value
    if kind.endswith("?"):
        return value if value is NIL else coerce(value, kind[:-1])
    if kind in INT_RANGES:
        if not isinstance(value, Num):
            raise Unsupported(f"{value!r} where {kind} is expected")
        if value.kind not in ("lit", kind):
            raise Unsupported(f"{value.kind} where {kind} is expected (Swift has no implicit integer conversion)")
        return Num(kind, value.value)
    if kind.startswith("[") and ": " in kind:
        key, val = kind[1:-1].split(": ", 1)
        if not isinstance(value, dict):
            raise Unsupported(f"{value!r} where {kind} is expected")
        return {coerce(k, key): coerce(v, val) for k, v in value.items()}
    if kind.startswith("["):
        if not isinstance(value, list):
            raise Unsupported(f"{value!r} where {kind} is expected")
        return [coerce(v, kind[1:-1]) for v in value]
    if kind == "String" and not isinstance(value, str):
        raise Unsupported(f"{value!r} where String is expected")
    if kind == "Bool" and not isinstance(value, bool):
        raise Unsupported(f"{value!r} where Bool is expected")
    return value


class Env:
    def __init__(self, instance: Instance | None = None):
        self.vars: dict[str, Any] = {}
        self.types: dict[str, str | None] = {}
        self.instance = instance

    def lookup(self, name: str) -> Any:
        if name in self.vars:
            return self.vars[name]
        if self.instance is not None and name in self.instance.fields:
            return self.instance.fields[name]
        raise KeyError(name)

    def set(self, name: str, value: Any) -> None:
        if name in self.vars:
            self.vars[name] = coerce(value, self.types.get(name))
        elif self.instance is not None and name in self.instance.fields:
            self.instance.fields[name] = value
        else:
            raise Unsupported(f"assignment to undeclared {name}")


class _Return(Exception):
    def __init__(self, value: Any):
        self.value = value


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class SwiftSubset:
    """Free functions, globals and one struct of a Swift source file, evaluated from the parse tree."""

    def __init__(self, root: Any, seed: int = 0):
        root = root if isinstance(root, Node) else Node(root)
        self.functions: dict[str, Any] = {}
        self.globals: dict[str, Any] = {}
        self.structs: dict[str, Any] = {}
        self.rng = random.Random(seed)
        for node in root.children:
            if node.type == "function_declaration":
                self.functions[text(named(node, "simple_identifier")[0])] = node
            elif node.type == "property_declaration":
                self.globals[text(named(node, "pattern")[0])] = node
            elif node.type == "class_declaration" and any(text(c) == "struct" for c in node.children):
                self.structs[text(named(node, "type_identifier")[0])] = node
        self.global_values: dict[str, Any] = {}

    # ---- entry points -------------------------------------------------------------------------------------------
    def call(self, name: str, *args: Any, labels: tuple[str | None, ...] = ()) -> Any:
        return self.invoke(self.functions[name], list(args), list(labels) + [None] * (len(args) - len(labels)), None)

    def instantiate(self, struct: str, labels: tuple[str, ...], *args: Any) -> Instance:
        body = named(self.structs[struct], "class_body")[0]
        fields = {}
        for decl in named(body, "property_declaration"):
            modifiers = " ".join(text(m) for m in named(decl, "modifiers"))
            if "static" not in modifiers and not named(decl, "computed_property"):
                fields[text(named(decl, "pattern")[0])] = None
        instance = Instance(struct, fields)
        init = named(body, "init_declaration")[0]
        self.invoke(init, list(args), list(labels), instance)
        unset = [k for k, v in fields.items() if v is None]
        if unset:
            raise Unsupported(f"{struct}.init leaves {unset} unset (Swift would not compile it)")
        return instance

    def method(self, instance: Instance, name: str, *args: Any) -> Any:
        return self.invoke(self._method_node(instance.type_name, name), list(args), [None] * len(args), instance)

    def _method_node(self, struct: str, name: str) -> Any:
        body = named(self.structs[struct], "class_body")[0]
        for fn in named(body, "function_declaration"):
            if text(named(fn, "simple_identifier")[0]) == name:
                return fn
        raise KeyError(name)

    def global_value(self, name: str) -> Any:
        if name not in self.global_values:
            decl = self.globals[name]
            annotation = named(decl, "type_annotation")
            value = self.expr(decl.children[-1], Env())
            self.global_values[name] = coerce(value, type_name(annotation[0]) if annotation else None)
        return self.global_values[name]

    # ---- functions ----------------------------------------------------------------------------------------------
    def invoke(self, fn: Any, args: list[Any], labels: list[str | None], instance: Instance | None) -> Any:
        params = named(fn, "parameter")
        if len(args) != len(params):
            raise Unsupported(f"{len(args)} arguments for {len(params)} parameters")
        env = Env(instance)
        for param, arg, label in zip(params, args, labels, strict=True):
            ids = named(param, "simple_identifier")
            external = text(ids[0])
            if (None if external == "_" else external) != label:
                raise Unsupported(f"argument label {label} for parameter {external}")
            name = text(ids[-1])
            kind = type_name(next(c for c in param.children if c.type.endswith("_type")))
            env.vars[name], env.types[name] = coerce(copy(arg), kind), kind
        returns = next((c for c in fn.children if c.type.endswith("_type") and c.prev_sibling is not None
                        and c.prev_sibling.type == "->"), None)
        body = named(fn, "function_body")[0]
        try:
            self.block(body, env)
        except _Return as r:
            return coerce(r.value, type_name(returns)) if returns is not None else r.value
        return None

    def block(self, node: Any, env: Env) -> None:
        for statements in named(node, "statements"):
            for stmt in statements.children:
                self.statement(stmt, env)

    # ---- statements ---------------------------------------------------------------------------------------------
    def statement(self, node: Any, env: Env) -> None:
        kind = node.type
        if kind == "comment":
            return
        if kind == "property_declaration":
            name = text(named(node, "pattern")[0])
            annotation = named(node, "type_annotation")
            declared = type_name(annotation[0]) if annotation else None
            env.vars[name] = coerce(copy(self.expr(node.children[-1], env)), declared)
            env.types[name] = declared if declared else _type_of(env.vars[name])
        elif kind == "assignment":
            self.assignment(node, env)
        elif kind == "call_expression":
            self.expr(node, env)
        elif kind == "if_statement":
            self.if_statement(node, env)
        elif kind == "while_statement":
            cond = node.children[1]
            while self.truth(self.expr(cond, env)):
                try:
                    self.block(node, env)
                except _Break:
                    break
                except _Continue:
                    continue
        elif kind == "for_statement":
            self.for_statement(node, env)
        elif kind == "control_transfer_statement":
            word = text(node.children[0])
            if word == "return":
                raise _Return(self.expr(node.children[1], env) if len(node.children) > 1 else None)
            if word == "break":
                raise _Break
            if word == "continue":
                raise _Continue
            if node.children[0].type == "throw_keyword":
                raise SwiftThrow(self.throw_message(node.children[1], env))
            raise Unsupported(f"control transfer {word}")
        else:
            raise Unsupported(f"statement {kind}: {text(node)[:80]}")

    def throw_message(self, node: Any, env: Env) -> str:
        if node.type == "call_expression":  # ClipTokenizerError.unsupported("...")
            values = [v for _, v in self.arguments(node.children[1], env)]
            return " ".join(str(v) for v in values)
        return text(node)

    def if_statement(self, node: Any, env: Env) -> None:
        children = list(node.children)
        open_at = next(i for i, c in enumerate(children) if c.type == "{")
        close_at = next(i for i, c in enumerate(children) if c.type == "}" and i > open_at)
        ok, bound, i = True, {}, 1
        while i < open_at:
            child = children[i]
            if child.type == "value_binding_pattern":  # if let name = expr (only the bound name is new)
                name, value = text(children[i + 1]), self.expr(children[i + 3], env)
                ok = ok and value is not NIL
                bound[name] = value
                i += 4
            elif child.type == ",":
                i += 1
            else:
                ok = ok and self.truth(self.expr(child, env))
                i += 1
            if not ok:
                break
        if ok:
            shadowed = {k: (env.vars[k], env.types.get(k)) for k in bound if k in env.vars}
            for k, v in bound.items():
                env.vars[k], env.types[k] = v, _type_of(v)
            try:
                for stmts in (c for c in children[open_at:close_at] if c.type == "statements"):
                    for stmt in stmts.children:
                        self.statement(stmt, env)
            finally:
                for k in bound:
                    env.vars.pop(k, None)
                for k, (v, t) in shadowed.items():
                    env.vars[k], env.types[k] = v, t
            return
        rest = children[close_at + 1:]
        if rest and rest[0].type == "else":
            if rest[1].type == "if_statement":
                self.if_statement(rest[1], env)
                return
            for stmts in (c for c in rest if c.type == "statements"):
                for stmt in stmts.children:
                    self.statement(stmt, env)

    def for_statement(self, node: Any, env: Env) -> None:
        pattern = named(node, "pattern")[0]
        seq_node = node.children[node.children.index(next(c for c in node.children if c.type == "in")) + 1]
        seq = self.expr(seq_node, env)
        if isinstance(seq, dict):
            items = list(seq.items())
            self.rng.shuffle(items)  # Swift's dictionary order is not defined
            seq = [("tuple", k, v) for k, v in items]
        elif isinstance(seq, range):
            seq = [Num("Int", v) for v in seq]
        elif not isinstance(seq, list):
            raise Unsupported(f"for-in over {type(seq).__name__}")
        names = [text(p) for p in named(pattern, "pattern")] or [text(pattern)]
        saved = {k: env.vars[k] for k in names if k in env.vars}
        for item in seq:
            if len(names) == 2:
                if not (isinstance(item, tuple) and item[0] == "tuple"):
                    raise Unsupported("tuple pattern over a non-dictionary")
                env.vars[names[0]], env.vars[names[1]] = item[1], item[2]
            else:
                env.vars[names[0]] = copy(item)
            for n in names:
                env.types[n] = _type_of(env.vars[n])
            try:
                self.block(node, env)
            except _Break:
                break
            except _Continue:
                continue
        for n in names:
            env.vars.pop(n, None)
        env.vars.update(saved)

    def assignment(self, node: Any, env: Env) -> None:
        target, op, value_node = node.children
        value = self.expr(value_node, env)
        op = text(op)
        inner = target.children[0] if target.type == "directly_assignable_expression" else target
        if inner.type == "simple_identifier":
            name = text(inner)
            new = value if op == "=" else self.compound(op, env.lookup(name), value)
            env.set(name, copy(new))
        elif inner.type == "navigation_expression" and inner.children[0].type == "self_expression":
            name = text(named(inner.children[1], "simple_identifier")[0])
            if env.instance is None or name not in env.instance.fields or op != "=":
                raise Unsupported(f"assignment {text(node)}")
            env.instance.fields[name] = copy(value)
        elif inner.type == "call_expression" and _subscript(inner):
            container = env.lookup(text(inner.children[0]))
            ((_, key),) = self.arguments(inner.children[1], env)
            if isinstance(container, dict):
                old = container.get(key, NIL)
                container[key] = copy(value if op == "=" else self.compound(op, old, value))
            elif isinstance(container, list):
                index = self.index(key, len(container))
                container[index] = copy(value if op == "=" else self.compound(op, container[index], value))
            else:
                raise Unsupported(f"subscript assignment into {type(container).__name__}")
        else:
            raise Unsupported(f"assignment to {inner.type}: {text(node)}")

    def compound(self, op: str, old: Any, value: Any) -> Any:
        if op == "+=":
            if isinstance(old, list):
                if not isinstance(value, list):
                    raise Unsupported("array += non-array")
                return old + copy(value)
            return self.binary("+", old, value)
        if op == "-=":
            return self.binary("-", old, value)
        raise Unsupported(f"compound assignment {op}")

    # ---- expressions --------------------------------------------------------------------------------------------
    @staticmethod
    def truth(value: Any) -> bool:
        if not isinstance(value, bool):
            raise Unsupported(f"condition is {value!r}, not a Bool")
        return value

    @staticmethod
    def index(key: Any, length: int) -> int:
        if not (isinstance(key, Num) and key.kind in ("Int", "lit")):
            raise Unsupported(f"array index {key!r} is not an Int")
        if not 0 <= key.value < length:
            raise SwiftTrap(f"index {key.value} out of range 0..<{length}")
        return key.value

    def arguments(self, suffix: Any, env: Env) -> list[tuple[str | None, Any]]:
        out = []
        args = named(suffix, "value_arguments")
        for arg in named(args[0], "value_argument") if args else []:
            label = named(arg, "value_argument_label")
            out.append((text(label[0]) if label else None, self.expr(arg.children[-1], env)))
        return out

    def binary(self, op: str, a: Any, b: Any) -> Any:
        if op in ("==", "!="):
            same = _equal(a, b)
            return same if op == "==" else not same
        if isinstance(a, Num) and isinstance(b, Num):
            if not compatible(a, b):
                raise Unsupported(f"{a.kind} {op} {b.kind} does not type-check in Swift")
            kind = a.kind if a.kind != "lit" else b.kind
            if op in ("<", "<=", ">", ">="):
                return {"<": a.value < b.value, "<=": a.value <= b.value, ">": a.value > b.value,
                        ">=": a.value >= b.value}[op]
            if op in ("+", "-", "*"):
                value = {"+": a.value + b.value, "-": a.value - b.value, "*": a.value * b.value}[op]
                return Num(kind, value)  # traps on overflow / UInt underflow
        if isinstance(a, str) and isinstance(b, str) and op == "+":
            return a + b
        raise Unsupported(f"{a!r} {op} {b!r}")

    def expr(self, node: Any, env: Env) -> Any:
        kind = node.type
        if kind in ("integer_literal", "hex_literal"):
            return Num("lit", int(text(node).replace("_", ""), 0))
        if kind == "boolean_literal":
            return text(node) == "true"
        if kind == "line_string_literal":
            return self.string_literal(node, env)
        if kind == "simple_identifier":
            name = text(node)
            if name == "nil":
                return NIL
            try:
                return env.lookup(name)
            except KeyError:
                if name in self.globals:
                    return self.global_value(name)
                raise Unsupported(f"unknown name {name}") from None
        if kind == "tuple_expression":
            items = [c for c in node.children if c.is_named]
            if len(items) != 1:
                raise Unsupported(f"tuple {text(node)}")
            return self.expr(items[0], env)
        if kind == "array_literal":
            return [self.expr(c, env) for c in node.children if c.is_named]
        if kind == "dictionary_literal":
            if text(node).replace(" ", "") != "[:]":
                raise Unsupported(f"dictionary literal {text(node)}")
            return {}
        if kind == "range_expression":
            lo, op, hi = node.children
            if text(op) != "..<":
                raise Unsupported(f"range {text(node)}")
            a, b = self.expr(lo, env), self.expr(hi, env)
            return ("range", a.value, b.value)
        if kind == "try_expression":
            return self.expr(node.children[-1], env)
        if kind in BINARY:
            lhs, op, rhs = node.children
            op = text(op)
            for side in (lhs, rhs):
                if side.type in BINARY and not (side.type == kind and op in ASSOCIATIVE and text(side.children[1]) == op):
                    raise Unsupported(f"unparenthesised mixed operators: {text(node)}")
            if op == "&&":
                return self.truth(self.expr(lhs, env)) and self.truth(self.expr(rhs, env))
            if op == "||":
                return self.truth(self.expr(lhs, env)) or self.truth(self.expr(rhs, env))
            return self.binary(op, self.expr(lhs, env), self.expr(rhs, env))
        if kind == "prefix_expression":
            op, operand = node.children
            if text(op) == ".":
                return EnumCase(text(operand))
            if text(op) == "!":
                return not self.truth(self.expr(operand, env))
            if text(op) == "-":
                value = self.expr(operand, env)
                if isinstance(value, Num):
                    return Num(value.kind, -value.value)
            raise Unsupported(f"prefix {text(node)}")
        if kind == "navigation_expression":
            return self.navigation(node, env)
        if kind == "call_expression":
            return self.call_expression(node, env)
        raise Unsupported(f"expression {kind}: {text(node)[:80]}")

    def string_literal(self, node: Any, env: Env) -> str:
        out = []
        for child in node.children:
            if child.type == "line_str_text":
                out.append(text(child))
            elif child.type == "str_escaped_char":
                escapes = {"\\\\": "\\", '\\"': '"', "\\n": "\n", "\\t": "\t", "\\r": "\r", "\\'": "'", "\\0": "\0"}
                if text(child) not in escapes:
                    raise Unsupported(f"escape {text(child)}")
                out.append(escapes[text(child)])
            elif child.type == "interpolated_expression":
                value = self.expr(child.children[0], env)
                out.append(value if isinstance(value, str) else str(value.value if isinstance(value, Num) else value))
        return "".join(out)

    def navigation(self, node: Any, env: Env) -> Any:
        base, suffix = node.children
        field = text(named(suffix, "simple_identifier")[0])
        if base.type == "simple_identifier" and text(base) in ("Int", "UInt32") and field == "max":
            return Num(text(base), INT_RANGES[text(base)][1])
        if base.type == "self_expression":
            if env.instance is None or field not in env.instance.fields:
                raise Unsupported(f"self.{field}")
            return env.instance.fields[field]
        value = self.expr(base, env)
        if isinstance(value, Instance):
            if field not in value.fields:
                raise Unsupported(f"{value.type_name} has no {field}")
            return value.fields[field]
        if field == "count" and isinstance(value, (list, dict)):
            return Num("Int", len(value))
        if field == "isEmpty" and isinstance(value, (list, dict)):
            return len(value) == 0
        if isinstance(value, str):
            if field == "unicodeScalars":
                return [Scalar(ord(c)) for c in value]
            if field == "utf8":
                return [Num("UInt8", b) for b in value.encode("utf-8", "surrogatepass")]
            if field == "precomposedStringWithCanonicalMapping":
                return unicodedata.normalize("NFC", value)
            if field == "isEmpty":
                return value == ""
            raise Unsupported(f"String.{field} (Characters are grapheme clusters: use unicodeScalars)")
        if isinstance(value, Scalar):
            if field == "value":
                return Num("UInt32", value.value)
            if field == "properties":
                return ("properties", value.value)
        if isinstance(value, tuple) and value[0] == "properties":
            if field == "generalCategory":
                return EnumCase(SWIFT_CATEGORY[unicodedata.category(chr(value[1]))])
            if field == "lowercaseMapping":
                return chr(value[1]).lower()  # the full (unconditional) lowercase mapping of one scalar
        raise Unsupported(f".{field} of {value!r}")

    def call_expression(self, node: Any, env: Env) -> Any:
        callee, suffix = node.children
        return self.call_with(callee, suffix, env, _subscript(node), node)

    def call_with(self, callee: Any, suffix: Any, env: Env, subscript: bool, node: Any) -> Any:
        if subscript:
            if callee.type in BINARY:  # tree-sitter binds `a + b[i]` as `(a + b)[i]`; Swift does not
                raise Unsupported(f"subscript after a binary operator (parenthesise or bind it first): {text(node)}")
            container = self.expr(callee, env)
            ((_, key),) = self.arguments(suffix, env)
            if isinstance(key, tuple) and key[0] == "range":
                if not isinstance(container, list) or not 0 <= key[1] <= key[2] <= len(container):
                    raise SwiftTrap(f"range {key[1]}..<{key[2]} out of bounds")
                return copy(container[key[1]:key[2]])
            if isinstance(container, dict):
                return container.get(key, NIL)
            if isinstance(container, list):
                return container[self.index(key, len(container))]
            raise Unsupported(f"subscript of {type(container).__name__}")
        if callee.type == "prefix_expression" and text(callee.children[0]) == "!":  # !x.f(y) is !(x.f(y))
            return not self.truth(self.call_with(callee.children[1], suffix, env, False, node))
        if callee.type == "navigation_expression":
            return self.method_call(callee, suffix, env)
        if callee.type != "simple_identifier":
            raise Unsupported(f"call of {callee.type}: {text(node)[:80]}")
        name = text(callee)
        args = self.arguments(suffix, env)
        values = [v for _, v in args]
        if name == "Array":
            (value,) = values
            if not isinstance(value, list):
                raise Unsupported(f"Array({value!r})")
            return copy(value)
        if name == "String":
            (value,) = values
            if not isinstance(value, ScalarView):
                raise Unsupported("String(...) of anything but a UnicodeScalarView")
            return "".join(chr(s.value) for s in value)
        if name in INT_RANGES:
            (value,) = values
            return Num(name, value.value)  # traps when out of range, like Int(x) / UInt32(x)
        if name in self.functions:
            return self.invoke(self.functions[name], values, [lbl for lbl, _ in args], None)
        if env.instance is not None:
            try:
                fn = self._method_node(env.instance.type_name, name)
            except KeyError:
                fn = None
            if fn is not None:
                return self.invoke(fn, values, [lbl for lbl, _ in args], env.instance)
        raise Unsupported(f"call of {name}")

    def method_call(self, callee: Any, suffix: Any, env: Env) -> Any:
        base, nav = callee.children
        method = text(named(nav, "simple_identifier")[0])
        args = self.arguments(suffix, env)
        values = [v for _, v in args]
        if text(base) == "String" and method == "UnicodeScalarView" and not args:
            return ScalarView()
        if text(base) == "Unicode" and method == "Scalar":
            (value,) = values
            value = coerce(value, "UInt32")
            ok = value.value <= 0x10FFFF and not 0xD800 <= value.value <= 0xDFFF
            return Scalar(value.value) if ok else NIL
        if base.type != "simple_identifier":
            raise Unsupported(f"method on {base.type}: {text(callee)}")
        name = text(base)
        target = env.lookup(name) if (name in env.vars or (env.instance and name in env.instance.fields)) \
            else self.global_value(name)
        if method == "contains":
            (value,) = values
            return any(_equal(v, value) for v in target)
        if method == "append" and isinstance(target, list):
            (value,) = values
            element = env.types.get(name)
            target.append(coerce(copy(value), element[1:-1] if element and element.startswith("[") else None)
                          if not isinstance(target, ScalarView) else value)
            return None
        if method == "insert" and isinstance(target, list):
            (value, at) = values
            if [lbl for lbl, _ in args] != [None, "at"]:
                raise Unsupported("insert(_:at:)")
            if not 0 <= at.value <= len(target):
                raise SwiftTrap(f"insert at {at.value} out of range")
            target.insert(at.value, copy(value))
            return None
        raise Unsupported(f"{name}.{method}(...)")


def _subscript(node: Any) -> bool:
    suffix = node.children[1] if len(node.children) > 1 else None
    args = named(suffix, "value_arguments") if suffix is not None and suffix.type == "call_suffix" else []
    return bool(args) and text(args[0].children[0]) == "["


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Num) and isinstance(b, Num):
        if not compatible(a, b):
            raise Unsupported(f"{a.kind} == {b.kind} does not type-check in Swift")
        return a.value == b.value
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b) and not (a is NIL or b is NIL):
        raise Unsupported(f"{a!r} == {b!r} does not type-check in Swift")
    return a == b


def _type_of(value: Any) -> str | None:
    if isinstance(value, Num):
        return None if value.kind == "lit" else value.kind
    if isinstance(value, list) and value and isinstance(value[0], Num) and value[0].kind != "lit":
        return f"[{value[0].kind}]"
    return None
