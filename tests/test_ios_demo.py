"""The iOS demo (ios_demo/): what can be checked without a Swift compiler.

- every .swift file parses with tree-sitter-swift (no ERROR / MISSING nodes);
- the keys the Swift Codable types read/write exist in the manifest / device-results schemas (and are required there
  when the Swift property is not optional), and a real converted bundle has every key the app needs;
- the Swift code's dtype table (manifest dtype → MLMultiArray type, int64 → int32) and its input rule (class_label,
  guidance_scale, stream = input index) match a real `cdx convert --target coreml` .mlpackage spec and golden files;
- the Swift cdx-normal-v1: its constants and operation order equal cdx/rng.py's, and its integer and Box–Muller
  functions and the `normal` loop the app calls, evaluated from the Swift parse tree, reproduce
  tests/data/rng_vectors.json bit for bit, and one-token changes to them are caught;
- the golden noise of a real Core ML bundle is what that Swift `normal` draws (not what cdx/rng.py draws).

Swift itself runs only on a Mac (ios_demo/Tests, `swift test`) or an iPhone; see ios_demo/README.md.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# tree-sitter + tree-sitter-swift are dev dependencies (`pip install -e '.[dev]'`): skipped without, failed under CI=true
pytestmark = pytest.mark.requires("tree-sitter-swift")

REPO = Path(__file__).resolve().parents[1]
IOS = REPO / "ios_demo"
KIT = IOS / "Sources" / "CDXKit"
VECTORS = json.loads((REPO / "tests" / "data" / "rng_vectors.json").read_text())
MASK = 0xFFFFFFFF
BINARY = {"infix_expression", "bitwise_operation", "multiplicative_expression", "additive_expression"}


# ---- parsing helpers ---------------------------------------------------------------------------------------------
def parse_source(source: bytes) -> Any:
    import tree_sitter as ts
    import tree_sitter_swift

    parser = ts.Parser(ts.Language(tree_sitter_swift.language()))
    return parser.parse(source).root_node


def parse(path: Path) -> Any:
    return parse_source(path.read_bytes())


def walk(node: Any):
    yield node
    for child in node.children:
        yield from walk(child)


def text(node: Any) -> str:
    return node.text.decode()


def named(node: Any, kind: str) -> list[Any]:
    return [c for c in node.children if c.type == kind]


def type_declarations(root: Any) -> dict[str, Any]:
    """Every struct/enum/class declaration by name (nested ones included) → its body node."""
    found = {}
    for node in walk(root):
        if node.type == "class_declaration":
            name = next(c for c in node.children if c.type == "type_identifier")
            body = next(c for c in node.children if c.type in ("class_body", "enum_class_body"))
            found.setdefault(text(name), body)
    return found


def stored_properties(body: Any) -> dict[str, bool]:
    """Instance stored properties of a struct body → optional?"""
    props = {}
    for decl in named(body, "property_declaration"):
        modifiers = " ".join(text(m) for m in named(decl, "modifiers"))
        if "static" in modifiers or named(decl, "computed_property"):
            continue
        name = text(named(decl, "pattern")[0])
        annotation = named(decl, "type_annotation")
        props[name] = bool(annotation) and any(c.type == "optional_type" for c in annotation[0].children)
    return props


def json_keys(bodies: dict[str, Any], struct: str) -> dict[str, bool]:
    """JSON key → optional?, for one Codable struct: CodingKeys raw values when present, else property names."""
    body = bodies[struct]
    props = stored_properties(body)
    keys_enum = next((c for c in named(body, "class_declaration")
                      if text(next(x for x in c.children if x.type == "type_identifier")) == "CodingKeys"), None)
    if keys_enum is None:
        return props
    out, cases = {}, set()
    for entry in named(next(c for c in keys_enum.children if c.type == "enum_class_body"), "enum_entry"):
        case = text(named(entry, "simple_identifier")[0])
        raw = named(entry, "line_string_literal")
        out[text(raw[0]).strip('"') if raw else case] = props[case]
        cases.add(case)
    assert set(props) == cases, f"{struct}: stored properties {set(props)} vs CodingKeys {cases}"
    return out


def swift_functions(root: Any) -> dict[str, Any]:
    return {text(named(f, "simple_identifier")[0]): f for f in walk(root) if f.type == "function_declaration"}


def string_constant(root: Any, name: str) -> str:
    for decl in walk(root):
        if decl.type == "property_declaration" and text(named(decl, "pattern")[0]) == name:
            return text(named(decl, "line_string_literal")[0]).strip('"')
    raise AssertionError(f"no constant {name}")


def all_swift_files() -> list[Path]:
    return sorted(IOS.rglob("*.swift"))


# ---- 1. syntax -----------------------------------------------------------------------------------------------------
def test_every_swift_file_parses_without_errors() -> None:
    files = all_swift_files()
    assert len(files) >= 10, files
    for path in files:
        root = parse(path)
        bad = [n for n in walk(root) if n.type == "ERROR" or n.is_missing]
        where = [f"{path.relative_to(REPO)}:{n.start_point[0] + 1}: {n.type} {text(n)[:60]!r}" for n in bad]
        assert not root.has_error and not bad, "\n".join(where) or f"{path}: has_error"


# ---- 2. the JSON contracts -----------------------------------------------------------------------------------------
MANIFEST_STRUCTS = {  # Swift struct → where it sits in cdx/schemas/manifest.schema.json
    "Manifest": (), "Source": ("properties", "source"), "Conditioning": ("properties", "conditioning"),
    "Guidance": ("properties", "conditioning", "properties", "guidance"), "RNGInfo": ("properties", "rng"),
    "TensorSpec": ("$defs", "tensor"), "Golden": ("$defs", "model", "properties", "golden"),
    "ModelEntry": ("$defs", "model"), "FileEntry": ("properties", "files", "items"),
    "TokenizerSection": ("$defs", "tokenizer"), "TokenizerFiles": ("$defs", "tokenizer", "properties", "files"),
}
RESULTS_STRUCTS = {  # Swift struct → where it sits in benchmarks/device_results.schema.json
    "DeviceResults": (), "Device": ("properties", "device"), "App": ("properties", "app"),
    "BundleInfo": ("properties", "bundle"), "Result": ("properties", "results", "items"),
    "Latency": ("properties", "results", "items", "properties", "latency"),
    "GoldenCheck": ("properties", "results", "items", "properties", "golden"),
}


def schema_at(schema: dict, where: tuple[str, ...]) -> dict:
    node = schema
    for key in where:
        node = node[key]
    return node


def test_manifest_keys_the_app_decodes_are_schema_keys() -> None:
    """Every key Manifest.swift decodes is in the schema; every non-optional one is required there (else a valid
    manifest could fail to decode on the phone)."""
    schema = json.loads((REPO / "cdx" / "schemas" / "manifest.schema.json").read_text())
    bodies = type_declarations(parse(KIT / "Manifest.swift"))
    for struct, where in MANIFEST_STRUCTS.items():
        node = schema_at(schema, where)
        for key, optional in json_keys(bodies, struct).items():
            assert key in node["properties"], f"{struct}.{key} is not in the manifest schema at {where}"
            if not optional:
                assert key in node.get("required", []), f"{struct}.{key}: not optional in Swift, optional in the schema"


def test_device_results_keys_the_app_writes_match_the_schema() -> None:
    """Every key DeviceResults.swift encodes is a schema property; every schema-required key is always written."""
    schema = json.loads((REPO / "benchmarks" / "device_results.schema.json").read_text())
    bodies = type_declarations(parse(KIT / "DeviceResults.swift"))
    for struct, where in RESULTS_STRUCTS.items():
        node = schema_at(schema, where)
        keys = json_keys(bodies, struct)
        for key in keys:
            assert key in node["properties"], f"{struct}.{key} is not in device_results.schema.json at {where}"
        for key in node.get("required", []):
            assert key in keys and not keys[key], f"{struct} does not always write the required key {key}"
    assert string_constant(parse(KIT / "DeviceResults.swift"), "schema") == schema["properties"]["schema"]["const"]
    runtime = string_constant(parse(KIT / "DeviceResults.swift"), "runtime")
    assert runtime in schema["properties"]["results"]["items"]["properties"]["runtime"]["enum"]


# ---- 3. a real converted .mlpackage --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coreml_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded Fashion-MNIST student converted to Core ML fp16 with golden seeds 0, 1, 2."""
    from cdx.convert.export import ConvertOptions, convert
    from cdx.defaults import default_student

    out = tmp_path_factory.mktemp("ios") / "coreml"
    convert(default_student(), out, ConvertOptions(target="coreml", quants=("fp16",), seeds=(0, 1, 2)))
    return out


SPEC_TYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32", "DOUBLE": "double"}


def swift_dtype_table() -> dict[str, str]:
    root = parse(KIT / "CoreMLGenerator.swift")
    decl = next(d for d in walk(root) if d.type == "property_declaration"
                and text(named(d, "pattern")[0]) == "coreMLArrayTypeForManifestDType")
    literal = named(decl, "dictionary_literal")[0]
    keys = [text(k).strip('"') for k in named(literal, "line_string_literal")]
    values = [text(v).lstrip(".") for v in named(literal, "prefix_expression")]
    assert len(keys) == len(values) == 4
    return dict(zip(keys, values, strict=True))


def test_swift_dtype_table_and_io_match_the_converted_mlpackage(coreml_bundle: Path) -> None:
    """The app checks the loaded model against the manifest with this table and builds MLMultiArrays of these types:
    names, shapes and types must be what coremltools really wrote (int64 class_label → INT32)."""
    import coremltools as ct

    from cdx.manifest import load_manifest

    def array_type_name(value: int) -> str:
        return ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(value)

    table = swift_dtype_table()
    assert table["int64"] == "int32" and table["float32"] == "float32"
    manifest = load_manifest(coreml_bundle)
    generators = [m for m in manifest["models"] if m["role"] == "generator" and m["format"] == "mlpackage"]
    assert generators, "the app would find no Core ML generator in this bundle"
    for model in generators:
        spec = ct.models.MLModel(str(coreml_bundle / model["file"]), skip_model_load=True).get_spec()
        features = {f.name: f for f in spec.description.input}
        assert [f.name for f in spec.description.input] == [i["name"] for i in model["inputs"]]
        for entry in model["inputs"]:
            array = features[entry["name"]].type.multiArrayType
            assert list(array.shape) == entry["shape"], entry["name"]
            kind = SPEC_TYPES[array_type_name(array.dataType)]
            assert kind == table[entry["dtype"]], f"{entry['name']}: spec {kind}, Swift feeds {table[entry['dtype']]}"
        class_input = next(i for i in model["inputs"] if i["name"] == "class_label")
        assert class_input["dtype"] == "int64"  # the manifest keeps int64; the Swift table turns it into int32
        outputs = {f.name: f.type.multiArrayType for f in spec.description.output}
        for entry in model["outputs"]:
            assert list(outputs[entry["name"]].shape) == entry["shape"]
            kind = SPEC_TYPES[array_type_name(outputs[entry["name"]].dataType)]
            assert kind == "float32"  # CoreMLGenerator.floats reads float32 directly (others via NSNumber)
        assert "image" in outputs and len(model["outputs"][0]["shape"]) == 4  # ImageRendering takes NCHW


def test_swift_input_rule_regenerates_the_golden_inputs(coreml_bundle: Path) -> None:
    """InputRole in Swift: class_label ← picker, guidance_scale ← manifest default, others ← cdx-normal-v1(seed,
    stream = input index). Applied to the real manifest it must give exactly the golden inputs of every seed."""
    from cdx.manifest import load_manifest

    swift = swift_rng()
    root = parse(KIT / "CoreMLGenerator.swift")
    class_name, guidance_name = string_constant(root, "classInputName"), string_constant(root, "guidanceInputName")
    roles_fn = text(swift_functions(root)["roles"])
    assert "model.inputs.enumerated()" in roles_fn and ".random(stream: index)" in roles_fn
    manifest = load_manifest(coreml_bundle)
    assert manifest["rng"]["name"] == string_constant(parse(KIT / "CDXNormal.swift"), "name")
    for model in manifest["models"]:
        golden = model["golden"]
        seeds = golden["seeds"]
        assert seeds == [0, 1, 2]
        for index, spec in enumerate(model["inputs"]):
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            data = np.fromfile(coreml_bundle / golden["inputs"][spec["name"]], dtype=dtype)
            per = math.prod(spec["shape"])
            assert data.size == per * len(seeds)  # decodeRaw + sample(i, of: n) split on axis 0
            for i, seed in enumerate(seeds):
                sample = data[i * per:(i + 1) * per]
                if spec["name"] == class_name:
                    assert sample.tolist() == [i % manifest["conditioning"]["num_classes"]] * per
                elif spec["name"] == guidance_name:
                    assert sample.tolist() == [manifest["conditioning"]["guidance"]["default"]] * per
                else:  # the app's noise: CDXNormalV1.normal evaluated from the Swift source, not cdx/rng.py
                    ours = swift.normal(seed, per, index)
                    assert np.array_equal(ours.view(np.uint32), sample.view(np.uint32)), f"{spec['name']} seed {seed}"
        assert all(f["path"].startswith(model["file"] + "/") or not f["path"].endswith(".mlmodel")
                   for f in manifest["files"] if model["file"] in f["path"])
        assert any(f["path"].startswith(model["file"] + "/") for f in manifest["files"])  # verifyPackage has files


def test_compute_unit_choices() -> None:
    bodies = type_declarations(parse(KIT / "CoreMLGenerator.swift"))
    cases = [text(named(e, "simple_identifier")[0]) for e in named(bodies["ComputeUnitsChoice"], "enum_entry")]
    assert cases == ["all", "cpuAndNeuralEngine", "cpuAndGPU", "cpuOnly"]


# ---- 4. cdx-normal-v1 in Swift -------------------------------------------------------------------------------------
def python_mix32_steps() -> list[tuple[str, int]]:
    """cdx/rng.py mix32 as (xorshift k | mul C) steps, read from its AST."""
    tree = ast.parse((REPO / "cdx" / "rng.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "mix32")
    steps = []
    for stmt in fn.body[2:]:  # docstring, v = asarray(x) & MASK
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.BitXor):
            assert isinstance(stmt.value, ast.BinOp) and isinstance(stmt.value.op, ast.RShift)
            steps.append(("xorshift", stmt.value.right.args[0].value))
        elif isinstance(stmt, ast.Assign):
            product = stmt.value.left
            assert isinstance(stmt.value.op, ast.BitAnd) and isinstance(product.op, ast.Mult)
            steps.append(("mul", product.right.args[0].value))
    return steps


def swift_mix32_steps(fn: Any) -> list[tuple[str, int]]:
    steps = []
    body = next(n for n in walk(fn) if n.type == "statements")
    for stmt in body.children:
        if stmt.type == "infix_expression" and text(stmt.children[1]) == "^=":
            shift = next(n for n in walk(stmt.children[2]) if n.type == "bitwise_operation")
            assert text(shift.children[1]) == ">>"
            steps.append(("xorshift", int(text(shift.children[2]), 0)))
        elif stmt.type == "assignment":
            product = stmt.children[2]
            assert text(product.children[1]) == "&*", "mix32 must use the wrapping multiply &*"
            steps.append(("mul", int(text(product.children[2]), 0)))
    return steps


def test_swift_constants_and_operation_order_equal_the_python_spec() -> None:
    root = parse(KIT / "CDXNormal.swift")
    functions = swift_functions(root)
    assert swift_mix32_steps(functions["mix32"]) == python_mix32_steps()
    py = (REPO / "cdx" / "rng.py").read_text()
    swift_hex = {int(text(n), 16) for n in walk(root) if n.type == "hex_literal"}
    python_hex = {int(h, 16) for h in re.findall(r"0x[0-9A-Fa-f]+", py.split('"""', 2)[2])} - {MASK}
    assert swift_hex == python_hex == {0x7FEB352D, 0x846CA68B, 0x9E3779B9, 0x632BE5AB}
    for name in ("mix32", "streamKey", "draws"):  # UInt32 in and out: wrapping arithmetic mod 2^32
        fn = functions[name]
        types = [text(t) for t in fn.children if t.type in ("user_type", "tuple_type")]
        assert all(t in ("UInt32", "(a: UInt32, b: UInt32)") for t in types), types
        ops = {text(n) for n in walk(fn) if n.type in ("custom_operator", "+", "*", "-")}
        assert ops <= {"&*", "&+", "^="}, f"{name} uses non-wrapping integer operators {ops}"
    # Box–Muller in the spec's order (float rounding can differ when regrouped, too rarely for the vectors to show)
    lets = {text(named(d, "pattern")[0]): " ".join(text(d.children[-1]).split())
            for d in walk(functions["gaussian"]) if d.type == "property_declaration"}
    assert lets == {"u1": "(Double(a) + 1.0) / 4294967296.0", "u2": "Double(b) / 4294967296.0", "logU1": "log(u1)",
                    "radius": "(-2.0 * logU1).squareRoot()", "angle": "(2.0 * Double.pi) * u2", "cosine": "cos(angle)"}
    assert "return Float(radius * cosine)" in text(functions["gaussian"])
    assert math.pi == 3.141592653589793  # Swift's Double.pi is the same double


class SwiftEval:
    """Evaluates the RNG's Swift functions (mix32, streamKey, draws, gaussian and the `normal` loop the app calls)
    from the parse tree, with Swift's semantics: UInt32 values wrap only through &* / &+, `UInt32(x)` traps outside
    0..<2^32 while `UInt32(truncatingIfNeeded:)` keeps the low bits, Double math is IEEE double, Float(x) rounds to
    float32. Mixed binary operators must be parenthesised (so tree-sitter's operator precedence, which differs from
    Swift's, never matters); anything else it does not know fails the test instead of being guessed."""

    def __init__(self, functions: dict[str, Any]) -> None:
        self.functions = functions

    def call(self, name: str, *args: tuple, labels: tuple[str | None, ...] | None = None) -> tuple:
        """The tagged result ("u32" | "int" | "f64" | "f32" | "tuple" | "array", value) of Swift function `name`."""
        fn = self.functions[name]
        params = named(fn, "parameter")
        names = [text(named(p, "simple_identifier")[-1]) for p in params]
        external = [text(named(p, "simple_identifier")[0]) for p in params]
        defaults = {}  # `stream: Int = 0`: the default follows its parameter in the declaration
        children = list(fn.children)
        for i, child in enumerate(children):
            if child.type == "=" and children[i - 1].type == "parameter":
                defaults[text(named(children[i - 1], "simple_identifier")[-1])] = self.expr(children[i + 1], {})
        assert len(args) <= len(names), f"{name}: {len(args)} arguments for {names}"
        for label, param in zip(labels or (), external, strict=False):
            assert label == (None if param == "_" else param), f"{name}: argument label {label} for parameter {param}"
        env = {n: a for n, a in zip(names, args, strict=False)}
        for missing in names[len(args):]:
            env[missing] = defaults[missing]
        body = next(c for c in fn.children if c.type == "function_body")
        result = self.block(next(c for c in body.children if c.type == "statements"), env)
        assert result is not None, f"{name} did not return"
        value = result[1]
        returns = next((c for c in fn.children if c.type == "tuple_type"), None)
        if value[0] == "tuple" and returns is not None:  # `-> (a: UInt32, b: UInt32)`: fields by label
            fields = [text(named(e, "simple_identifier")[0]) for e in named(returns, "tuple_type_item")]
            value = ("tuple", value[1], tuple(fields))
        return value

    def block(self, statements: Any, env: dict) -> tuple | None:
        for stmt in statements.children:
            result = self.statement(stmt, env)
            if result is not None:
                return result
        return None

    def statement(self, node: Any, env: dict) -> tuple | None:
        kind = node.type
        if kind == "property_declaration":
            env[text(named(node, "pattern")[0])] = self.expr(node.children[-1], env)
        elif kind == "assignment":
            target, value = node.children[0], self.expr(node.children[2], env)
            subscript = next((n for n in walk(target) if n.type == "call_suffix"), None)
            if subscript is None:
                env[text(target)] = value
            else:  # out[i] = value
                array = env[text(subscript.parent.children[0])]
                (index,) = self.arguments(subscript, env)
                assert array[0] == "array" and index[1][0] == "int", text(node)
                assert value[0] == "f32", f"{text(node)}: a [Float] element must be a Float, got {value[0]}"
                array[1][index[1][1]] = value[1]
        elif kind == "infix_expression" and text(node.children[1]) == "^=":
            target = text(node.children[0])
            env[target] = self.binary("^", env[target], self.expr(node.children[2], env))
        elif kind == "for_statement":  # for i in lo..<hi { ... }
            var = text(named(node, "pattern")[0])
            bounds = named(node, "range_expression")[0]
            lo, op, hi = bounds.children
            assert text(op) == "..<", text(bounds)
            start, stop = self.expr(lo, env), self.expr(hi, env)
            for i in range(self.integer(start), self.integer(stop)):
                env[var] = ("int", i)
                result = self.block(named(node, "statements")[0], env)
                if result is not None:
                    return result
        elif kind == "call_expression" and text(node.children[0]) == "precondition":
            pass  # the caller checks the count range itself
        elif kind == "control_transfer_statement":
            return ("return", self.expr(node.children[1], env))
        else:
            raise AssertionError(f"unsupported statement {kind}: {text(node)}")
        return None

    @staticmethod
    def integer(value: tuple) -> int:
        assert value[0] in ("int", "lit"), value
        return value[1]

    def arguments(self, suffix: Any, env: dict) -> list[tuple[str | None, tuple]]:
        """(label, value) of each argument of a call suffix `(x: 1, y)` or subscript `[i]`."""
        out = []
        for arg in (a for a in walk(suffix) if a.type == "value_argument" and a.parent.parent == suffix):
            label = named(arg, "value_argument_label")
            out.append((text(label[0]) if label else None, self.expr(arg.children[-1], env)))
        return out

    def binary(self, op: str, a: tuple, b: tuple) -> tuple:
        ints = {"u32", "lit"}
        if op in ("&*", "&+", "^", ">>"):
            assert a[0] in ints and b[0] in ints, f"{op} on {a[0]}, {b[0]}"
            x, y = a[1], b[1]
            value = {"&*": x * y, "&+": x + y, "^": x ^ y, ">>": x >> y}[op] & MASK
            return ("lit" if a[0] == b[0] == "lit" else "u32", value)
        if "int" in (a[0], b[0]) and {a[0], b[0]} <= {"int", "lit"} and op in "+-*":  # Swift Int arithmetic
            return ("int", {"+": a[1] + b[1], "-": a[1] - b[1], "*": a[1] * b[1]}[op])
        assert op in "+-*/" and "u32" not in (a[0], b[0]), f"plain {op} on UInt32 would trap on overflow in Swift"
        assert "int" not in (a[0], b[0]), f"{op} between Int and {a[0]}/{b[0]} does not type-check in Swift"
        x, y = float(a[1]), float(b[1])
        return ("f64", {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[op])

    def expr(self, node: Any, env: dict) -> tuple:
        kind = node.type
        if kind in ("integer_literal", "hex_literal"):
            return ("lit", int(text(node), 0))
        if kind == "real_literal":
            return ("f64", float(text(node)))
        if kind == "simple_identifier":
            return env[text(node)]
        if kind == "tuple_expression":
            items = [c for c in node.children if c.type not in ("(", ")", ",")]
            if len(items) == 1:
                return self.expr(items[0], env)
            return ("tuple", tuple(self.expr(i, env)[1] for i in items))
        if kind in BINARY:
            lhs, op, rhs = node.children
            assert lhs.type not in BINARY and rhs.type not in BINARY, f"unparenthesised mixed operators: {text(node)}"
            return self.binary(text(op), self.expr(lhs, env), self.expr(rhs, env))
        if kind == "prefix_expression":
            op, operand = node.children
            assert text(op) == "-"
            if operand.type in BINARY:  # `-2.0 * x`: Swift binds the prefix minus to the literal
                lhs, bop, rhs = operand.children
                return self.binary(text(bop), self.negate(self.expr(lhs, env)), self.expr(rhs, env))
            return self.negate(self.expr(operand, env))
        if kind == "navigation_expression":
            if text(node) == "Double.pi":
                return ("f64", math.pi)
            base, suffix = node.children
            value, field = self.expr(base, env), text(named(suffix, "simple_identifier")[0])
            assert value[0] == "tuple" and len(value) == 3, f"{text(node)}: field of {value[0]}"
            return ("u32", value[1][value[2].index(field)])
        if kind == "call_expression":
            return self.call_expression(node, env)
        raise AssertionError(f"unsupported expression {kind}: {text(node)}")

    def call_expression(self, node: Any, env: dict) -> tuple:
        callee, suffix = node.children
        args = self.arguments(suffix, env)
        labels, values = tuple(a[0] for a in args), [a[1] for a in args]
        if callee.type == "array_literal":  # [Float](repeating: 0, count: n)
            assert text(callee) == "[Float]" and labels == ("repeating", "count"), text(node)
            return ("array", [np.float32(values[0][1])] * self.integer(values[1]))
        if callee.type == "navigation_expression":
            assert text(callee.children[1]) == ".squareRoot" and not args
            return ("f64", math.sqrt(self.expr(callee.children[0], env)[1]))
        assert callee.type == "simple_identifier", f"call of {callee.type}: {text(node)}"
        name = text(callee)
        if name == "UInt32":
            ((label, value),) = args
            if label == "truncatingIfNeeded":
                return ("u32", value[1] & MASK)
            assert label is None and 0 <= value[1] <= MASK, f"UInt32({value[1]}) traps in Swift"
            return ("u32", value[1])
        builtins = {"Double": lambda v: ("f64", float(v[1])), "Float": lambda v: ("f32", np.float32(v[1])),
                    "log": lambda v: ("f64", math.log(v[1])), "cos": lambda v: ("f64", math.cos(v[1]))}
        if name in builtins:
            assert labels == (None,), text(node)
            return builtins[name](*values)
        return self.call(name, *values, labels=labels)

    @staticmethod
    def negate(value: tuple) -> tuple:
        assert value[0] == "f64", "negating an integer"
        return ("f64", -value[1])

    def normal(self, seed: int, count: int, stream: int) -> np.ndarray:
        """CDXNormalV1.normal(seed:count:stream:) as the app calls it (Int arguments), evaluated from the source."""
        assert 0 <= count < 2**31
        kind, values = self.call("normal", ("int", seed), ("int", count), ("int", stream),
                                 labels=("seed", "count", "stream"))
        assert kind == "array" and all(isinstance(v, np.float32) for v in values)
        return np.array(values, dtype=np.float32)


def swift_rng(source: bytes | None = None) -> SwiftEval:
    """The evaluator over CDXNormal.swift (or over `source`, a variant of it)."""
    root = parse(KIT / "CDXNormal.swift") if source is None else parse_source(source)
    return SwiftEval(swift_functions(root))


def vector_mismatches(swift: SwiftEval) -> list[str]:
    """Where the Swift RNG disagrees with tests/data/rng_vectors.json (empty: bit for bit)."""
    bad = []
    for x, expected in VECTORS["mix32"]:
        if swift.call("mix32", ("u32", x)) != ("u32", expected):
            bad.append(f"mix32({x})")
    for case in VECTORS["cases"]:
        where = f"seed {case['seed']} stream {case['stream']}"
        key = swift.call("streamKey", ("u32", case["seed"] & MASK), ("u32", case["stream"]), labels=("seed", "stream"))
        if key != ("u32", case["key"]):
            bad.append(f"streamKey {where}")
        for i, (a, b) in enumerate(zip(case["a"], case["b"], strict=True)):
            if swift.call("draws", key, ("u32", i))[1] != (a, b):
                bad.append(f"draws {where} element {i}")
        z = swift.normal(case["seed"], len(case["float32_bits"]), case["stream"])  # the loop the app runs
        if z.view(np.uint32).tolist() != case["float32_bits"]:
            bad.append(f"normal {where}")
    return bad


def test_swift_rng_evaluated_from_its_parse_tree_matches_the_vectors_bit_for_bit() -> None:
    swift = swift_rng()
    assert vector_mismatches(swift) == []
    for case in VECTORS["cases"]:  # gaussian on its own too: a Float, bit for bit
        key = ("u32", case["key"])
        for i, bits in enumerate(case["float32_bits"]):
            a, b = swift.call("draws", key, ("u32", i))[1]
            kind, z = swift.call("gaussian", ("u32", a), ("u32", b))
            assert kind == "f32" and isinstance(z, np.float32), (case["seed"], i)
            assert int(np.array(z).view(np.uint32)) == bits, (case["seed"], i)


@pytest.mark.parametrize(("original", "mutant"), [
    ("(2 &* index) &+ 1", "(2 &* index) &+ 3"),  # the b draw's counter
    ("&+ 0x632BE5AB", "&+ 0x632BE5AA"),  # a salt constant
    ("x ^= (x >> 15)", "x ^= (x >> 14)"),  # a mix32 shift
    ("(Double(a) + 1.0) / 4294967296.0", "Double(a) / 4294967296.0"),  # u1 in (0, 1], never log(0)
    ("stream: UInt32(truncatingIfNeeded: stream))", "stream: UInt32(truncatingIfNeeded: seed))"),  # normal's stream
    ("let pair = draws(key: key, index: UInt32(i))", "let pair = draws(key: key, index: UInt32(i + 1))"),
])
def test_a_one_token_change_to_the_swift_rng_is_caught(original: str, mutant: str) -> None:
    source = (KIT / "CDXNormal.swift").read_text()
    assert source.count(original) == 1, original
    try:
        bad = vector_mismatches(swift_rng(source.replace(original, mutant).encode()))
    except (AssertionError, ValueError, KeyError, TypeError) as refused:  # the evaluator refuses what Swift would not do
        bad = [f"refused: {refused}"]
    assert bad, f"{mutant!r} still matches the vectors: the check could not fail"


def test_swift_xctest_uses_the_shared_vectors_file() -> None:
    source = (IOS / "Tests" / "CDXKitTests" / "RNGVectorTests.swift").read_text()
    assert "tests/data/rng_vectors.json" in source and "float32_bits" in source and "bitPattern" in source
    # the relative walk from the test file to the repository root: Tests/CDXKitTests/<file> → ios_demo → repo
    assert source.count("deletingLastPathComponent()") == 4


# ---- 5. the CLIP tokenizer in Swift --------------------------------------------------------------------------------
TOKENIZER_VECTORS = json.loads((REPO / "tests" / "data" / "tokenizer_vectors.json").read_text("utf-8"))


def swift_tokenizer(source: bytes | None = None) -> Any:
    """The evaluator over ClipTokenizer.swift (or over `source`, a variant of it)."""
    from swift_subset import SwiftSubset

    return SwiftSubset(parse(KIT / "ClipTokenizer.swift") if source is None else parse_source(source))


def swift_section(section: dict) -> Any:
    """A manifest `tokenizer` section as the Manifest.TokenizerSection value JSONDecoder would make (CodingKeys)."""
    from swift_subset import NIL, Instance, Num

    keys = json_keys(type_declarations(parse(KIT / "Manifest.swift")), "TokenizerSection")
    body = type_declarations(parse(KIT / "Manifest.swift"))["TokenizerSection"]
    cases = [text(named(e, "simple_identifier")[0]) for e in named(next(
        c for c in named(body, "class_declaration") if "CodingKeys" in text(c)).children[-1], "enum_entry")]
    raw = list(keys)
    fields = {}
    for case, key in zip(cases, raw, strict=True):
        value = section.get(key)
        if value is None:
            assert keys[key], f"TokenizerSection.{case} is not optional but {key} is missing"
            fields[case] = NIL
        elif isinstance(value, bool) or not isinstance(value, int):
            fields[case] = value
        else:
            fields[case] = Num("Int", value)
    return Instance("TokenizerSection", fields)


def tokenizer_mismatches(swift: Any, first_only: bool = False) -> list[str]:
    """Where the Swift tokenizer disagrees with tests/data/tokenizer_vectors.json (empty: every token and id)."""
    from swift_subset import Num

    bad = []
    sets = TOKENIZER_VECTORS["sets"]
    if first_only:  # the small merges set first: mutants fail sooner
        sets = sorted(sets, key=lambda s: s["name"] != "merges")
    for vector_set in sets:
        vocab = {k: Num("Int", v) for k, v in json.loads(vector_set["vocab_json"]).items()}
        section = swift_section({**vector_set["tokenizer"], "files": {}})
        tokenizer = swift.instantiate("ClipTokenizer", ("section", "vocab", "merges"), section, vocab,
                                      vector_set["merges_txt"])
        for case in vector_set["cases"]:
            tokens = swift.method(tokenizer, "tokenize", case["text"])
            ids = [n.value for n in swift.method(tokenizer, "encode", case["text"])]
            if tokens != case["tokens"] or ids != case["input_ids"]:
                bad.append(f"{vector_set['name']} {case['text']!r}: {ids} vs {case['input_ids']}")
                if first_only:
                    return bad
    return bad


def test_swift_tokenizer_evaluated_from_its_parse_tree_matches_the_vectors() -> None:
    """ClipTokenizer.swift on every text of both vector sets (byte-level and merges): transformers' BPE symbols
    and padded input_ids exactly."""
    assert tokenizer_mismatches(swift_tokenizer()) == []


def test_swift_tokenizer_section_keys_and_split_rules_match_the_manifest() -> None:
    schema = json.loads((REPO / "cdx" / "schemas" / "manifest.schema.json").read_text())
    assert "tokenizer" in schema["$defs"]["model"]["properties"]
    swift = swift_tokenizer()
    pattern = swift.global_value("clipSplitPattern")
    assert pattern == TOKENIZER_VECTORS["sets"][0]["tokenizer"]["split_pattern"]
    contractions = ["".join(chr(n.value) for n in c) for c in swift.global_value("clipContractions")]
    assert ["'" + c for c in contractions] == pattern.split("|")[:7]
    import regex

    spaces = [n.value for n in swift.global_value("clipWhiteSpace")]
    assert spaces == [c for c in range(0x10000) if regex.match(r"\s", chr(c))]  # White_Space is all in the BMP


@pytest.mark.parametrize(("original", "mutant"), [
    ("if parts.count == 2 {", "if parts.count == 3 {"),  # merges.txt read as no merges
    ("j += 2", "j += 1"),  # a merged pair's second symbol kept as well
    ("while (k < ids.count) && (k < (maxLength - 2)) {", "while (k < ids.count) && (k < (maxLength - 1)) {"),
    ("if k == (bytes.count - 1) {", "if k == 0 {"),  # </w> on the wrong symbol
    ("out.append(lower.value)", "out.append(value)"),  # lowercase step that keeps the case
])
def test_a_one_token_change_to_the_swift_tokenizer_is_caught(original: str, mutant: str) -> None:
    from swift_subset import SwiftThrow, SwiftTrap, Unsupported

    source = (KIT / "ClipTokenizer.swift").read_text()
    assert source.count(original) == 1, original
    try:
        bad = tokenizer_mismatches(swift_tokenizer(source.replace(original, mutant).encode()), first_only=True)
    except (Unsupported, SwiftThrow, SwiftTrap) as refused:
        bad = [f"refused: {refused}"]
    assert bad, f"{mutant!r} still matches the vectors: the check could not fail"


def test_swift_app_wires_the_prompt_through_the_text_encoder() -> None:
    """Structure only (no Swift compiler here): the Prompt field exists for text students, Generate embeds the prompt
    with PromptEncoder (ClipTokenizer → the bundle's text_encoder package) and feeds it as text_embedding."""
    view = text(parse(IOS / "Sources" / "CDXDemoApp" / "ContentView.swift"))
    assert 'if demo.hasPromptInput {' in view and 'TextField("Prompt", text: $demo.prompt)' in view
    generate = text(swift_functions(parse(IOS / "Sources" / "CDXDemoApp" / "DemoModel.swift"))["generate"])
    assert "try encoder?.embed(prompt)" in generate and "textEmbedding: text?.embedding" in generate
    embed = text(swift_functions(parse(KIT / "PromptEncoder.swift"))["embed"])
    assert "tokenizer.encode(prompt)" in embed and "encoder.run([input.name: .ints(" in embed
    roles = text(swift_functions(parse(KIT / "CoreMLGenerator.swift"))["roles"])
    assert "case textInputName: return .text(stream: index)" in roles
    assert string_constant(parse(KIT / "CoreMLGenerator.swift"), "textInputName") == "text_embedding"
