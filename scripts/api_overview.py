"""Generate docs/API.md — every service, RPC, message, field and enum — from the .proto files under protos/.

protoc (grpc_tools) compiles the protos into a FileDescriptorSet with source info, so the overview carries
the proto comments and cannot drift from the contract; tests/protos/test_api_overview.py fails when the
committed docs/API.md differs from what this script renders.

    python scripts/api_overview.py            # write docs/API.md
    python scripts/api_overview.py --check    # exit 1 when docs/API.md is stale
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / "docs" / "API.md"

# FileDescriptorProto / DescriptorProto field numbers, as used in SourceCodeInfo.Location.path.
_FILE_PACKAGE = 2
_FILE_MESSAGE = 4
_FILE_ENUM = 5
_FILE_SERVICE = 6
_FILE_SYNTAX = 12
_MESSAGE_FIELD = 2
_MESSAGE_NESTED = 3
_MESSAGE_ENUM = 4
_MESSAGE_ONEOF = 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

FDP = descriptor_pb2.FieldDescriptorProto
_SCALAR_NAMES = {
    FDP.TYPE_DOUBLE: "double",
    FDP.TYPE_FLOAT: "float",
    FDP.TYPE_INT64: "int64",
    FDP.TYPE_UINT64: "uint64",
    FDP.TYPE_INT32: "int32",
    FDP.TYPE_FIXED64: "fixed64",
    FDP.TYPE_FIXED32: "fixed32",
    FDP.TYPE_BOOL: "bool",
    FDP.TYPE_STRING: "string",
    FDP.TYPE_BYTES: "bytes",
    FDP.TYPE_UINT32: "uint32",
    FDP.TYPE_SFIXED32: "sfixed32",
    FDP.TYPE_SFIXED64: "sfixed64",
    FDP.TYPE_SINT32: "sint32",
    FDP.TYPE_SINT64: "sint64",
}


def proto_files(root: Path = REPO_ROOT) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "protos").rglob("*.proto"))


def compile_descriptor_set(root: Path = REPO_ROOT) -> descriptor_pb2.FileDescriptorSet:
    """Run protoc with the repo root as include path (imports are written relative to it).

    protoc runs in a child process: grpc_tools' in-process compiler can crash (SIGSEGV) inside a process
    that already loaded many extension modules, e.g. a pytest run of the whole suite.
    """
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.pb"
        args = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            "--include_source_info",
            *proto_files(root),
        ]
        result = subprocess.run(args, cwd=root, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"protoc failed ({result.returncode}):\n{result.stderr}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _clean(comment: str) -> str:
    lines = [line.strip() for line in comment.strip("\n").splitlines()]
    # Keep blank lines as paragraph breaks; drop the "----" section rulers used in the protos.
    text = "\n".join(lines).strip()
    return "" if set(text) <= {"-", " "} else text


class Comments:
    """Looks up the comment attached to a descriptor element by its SourceCodeInfo path."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto):
        self._by_path: dict[tuple[int, ...], str] = {}
        self._detached: dict[tuple[int, ...], str] = {}
        for location in file.source_code_info.location:
            detached = [_clean(c) for c in location.leading_detached_comments]
            if any(detached):
                self._detached[tuple(location.path)] = "\n\n".join(c for c in detached if c)
            parts = [_clean(location.leading_comments), _clean(location.trailing_comments)]
            text = "\n".join(part for part in parts if part)
            if text:
                self._by_path[tuple(location.path)] = text

    def get(self, *path: int) -> str:
        return self._by_path.get(tuple(path), "")

    def detached(self, *path: int) -> str:
        return self._detached.get(tuple(path), "")


def _inline(text: str) -> str:
    """One table cell: paragraphs joined by <br>, pipes escaped."""
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n")]
    return "<br>".join(p for p in paragraphs if p).replace("|", "\\|")


def _paragraph(text: str) -> str:
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def _anchor(full_name: str) -> str:
    # GitHub's heading slugs: lower case, punctuation (the dots) dropped.
    return full_name.lower().replace(".", "")


def _type_link(type_name: str) -> str:
    name = type_name.lstrip(".")
    return f"[`{name}`](#{_anchor(name)})"


@dataclass
class MessageEntry:
    full_name: str
    proto: descriptor_pb2.DescriptorProto
    path: tuple[int, ...]
    comments: Comments


@dataclass
class EnumEntry:
    full_name: str
    proto: descriptor_pb2.EnumDescriptorProto
    path: tuple[int, ...]
    comments: Comments


def _walk_messages(
    messages: list[descriptor_pb2.DescriptorProto], prefix: str, path: tuple[int, ...], comments: Comments
) -> Iterator[MessageEntry]:
    for index, message in enumerate(messages):
        full_name = f"{prefix}.{message.name}"
        here = (*path, index)
        if not message.options.map_entry:
            yield MessageEntry(full_name, message, here, comments)
        yield from _walk_messages(list(message.nested_type), full_name, (*here, _MESSAGE_NESTED), comments)


def _walk_enums(file: descriptor_pb2.FileDescriptorProto, comments: Comments) -> Iterator[EnumEntry]:
    for index, enum in enumerate(file.enum_type):
        yield EnumEntry(f"{file.package}.{enum.name}", enum, (_FILE_ENUM, index), comments)

    def nested(
        messages: list[descriptor_pb2.DescriptorProto], prefix: str, path: tuple[int, ...]
    ) -> Iterator[EnumEntry]:
        for index, message in enumerate(messages):
            here = (*path, index)
            full_name = f"{prefix}.{message.name}"
            for enum_index, enum in enumerate(message.enum_type):
                yield EnumEntry(
                    f"{full_name}.{enum.name}", enum, (*here, _MESSAGE_ENUM, enum_index), comments
                )
            yield from nested(list(message.nested_type), full_name, (*here, _MESSAGE_NESTED))

    yield from nested(list(file.message_type), file.package, (_FILE_MESSAGE,))


class Renderer:
    def __init__(self, descriptor_set: descriptor_pb2.FileDescriptorSet):
        # The product's own contract first, then the standard inference protocol it also serves.
        self.files = sorted(
            descriptor_set.file, key=lambda f: (not f.name.startswith("protos/lstm_stack/"), f.name)
        )
        # Map entries are rendered as map<K, V>, so find them by full name.
        self.map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in self.files:
            for entry in _walk_messages(list(file.message_type), file.package, (), Comments(file)):
                for nested in entry.proto.nested_type:
                    if nested.options.map_entry:
                        self.map_entries[f".{entry.full_name}.{nested.name}"] = nested

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type_name in self.map_entries:
            entry = self.map_entries[field.type_name]
            key, value = entry.field[0], entry.field[1]
            return f"map<{self.field_type(key)}, {self.field_type(value)}>"
        if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_ENUM):
            return _type_link(field.type_name)
        return f"`{_SCALAR_NAMES[field.type]}`"

    def field_label(
        self, message: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
    ) -> str:
        if field.type_name in self.map_entries:
            return "map"
        if field.label == FDP.LABEL_REPEATED:
            return "repeated"
        if field.proto3_optional:
            return "optional"
        if field.HasField("oneof_index"):
            return f"oneof `{message.oneof_decl[field.oneof_index].name}`"
        return ""

    def render(self) -> str:
        out: list[str] = [
            "# lstm-stack API overview",
            "",
            "<!-- Generated by scripts/api_overview.py from protos/; do not edit by hand. -->",
            "",
            "Generated from the `.proto` files under `protos/` (the contract) by `scripts/api_overview.py`;",
            "`tests/protos/test_api_overview.py` fails when this file is stale. Every service has gRPC server",
            "reflection and `grpc.health.v1.Health`, so `grpcurl -plaintext HOST:PORT list` works without the",
            "proto files. Tensors travel as `dtype` + `shape` + little-endian `raw` bytes; JSON callers may send",
            "`values` instead (see [`lstm_stack.v1.Tensor`](#lstm_stackv1tensor)).",
            "",
            "## Contents",
            "",
        ]
        for file in self.files:
            out.append(f"- `{file.name}` (package `{file.package}`)")
            for service in file.service:
                name = f"{file.package}.{service.name}"
                out.append(f"  - service [`{name}`](#{_anchor(name)})")
        out.append("")
        for file in self.files:
            out.extend(self.render_file(file))
        return "\n".join(out).rstrip("\n") + "\n"

    def render_file(self, file: descriptor_pb2.FileDescriptorProto) -> list[str]:
        comments = Comments(file)
        out = [f"## `{file.name}`", ""]
        # A file's summary sits on its package statement, or above `syntax`.
        summary = comments.get(_FILE_PACKAGE) or comments.get(_FILE_SYNTAX) or comments.detached(_FILE_SYNTAX)
        if summary:
            out += [_paragraph(summary), ""]
        out += [f"Package `{file.package}`.", ""]
        for index, service in enumerate(file.service):
            out.extend(self.render_service(file, index, service, comments))
        for entry in _walk_messages(list(file.message_type), file.package, (_FILE_MESSAGE,), comments):
            out.extend(self.render_message(entry))
        for enum_entry in _walk_enums(file, comments):
            out.extend(self.render_enum(enum_entry))
        return out

    def render_service(
        self,
        file: descriptor_pb2.FileDescriptorProto,
        index: int,
        service: descriptor_pb2.ServiceDescriptorProto,
        comments: Comments,
    ) -> list[str]:
        out = [f"### {file.package}.{service.name}", "", "_service_", ""]
        text = comments.get(_FILE_SERVICE, index)
        if text:
            out += [_paragraph(text), ""]
        out += ["| RPC | Request | Response | Streaming | Description |", "| --- | --- | --- | --- | --- |"]
        for method_index, method in enumerate(service.method):
            kind = {
                (False, False): "unary",
                (True, False): "client stream",
                (False, True): "server stream",
                (True, True): "bidirectional",
            }[(method.client_streaming, method.server_streaming)]
            request = ("stream " if method.client_streaming else "") + _type_link(method.input_type)
            response = ("stream " if method.server_streaming else "") + _type_link(method.output_type)
            description = _inline(comments.get(_FILE_SERVICE, index, _SERVICE_METHOD, method_index))
            out.append(f"| `{method.name}` | {request} | {response} | {kind} | {description} |")
        out.append("")
        return out

    def render_message(self, entry: MessageEntry) -> list[str]:
        out = [f"### {entry.full_name}", "", "_message_", ""]
        text = entry.comments.get(*entry.path)
        if text:
            out += [_paragraph(text), ""]
        if not entry.proto.field:
            return [*out, "No fields.", ""]
        out += ["| Field | # | Type | Label | Description |", "| --- | --- | --- | --- | --- |"]
        for field_index, field in enumerate(entry.proto.field):
            description = _inline(entry.comments.get(*entry.path, _MESSAGE_FIELD, field_index))
            out.append(
                f"| `{field.name}` | {field.number} | {self.field_type(field)} "
                f"| {self.field_label(entry.proto, field)} | {description} |"
            )
        out.append("")
        real_oneofs = [
            (i, oneof)
            for i, oneof in enumerate(entry.proto.oneof_decl)
            if not all(
                f.proto3_optional
                for f in entry.proto.field
                if f.HasField("oneof_index") and f.oneof_index == i
            )
        ]
        for oneof_index, oneof in real_oneofs:
            members = ", ".join(
                f"`{f.name}`"
                for f in entry.proto.field
                if f.HasField("oneof_index") and f.oneof_index == oneof_index and not f.proto3_optional
            )
            note = _inline(entry.comments.get(*entry.path, _MESSAGE_ONEOF, oneof_index))
            out.append(f"Oneof `{oneof.name}`: at most one of {members}." + (f" {note}" if note else ""))
            out.append("")
        return out

    def render_enum(self, entry: EnumEntry) -> list[str]:
        out = [f"### {entry.full_name}", "", "_enum_", ""]
        text = entry.comments.get(*entry.path)
        if text:
            out += [_paragraph(text), ""]
        out += ["| Name | Number | Description |", "| --- | --- | --- |"]
        for value_index, value in enumerate(entry.proto.value):
            description = _inline(entry.comments.get(*entry.path, _ENUM_VALUE, value_index))
            out.append(f"| `{value.name}` | {value.number} | {description} |")
        out.append("")
        return out


def render(root: Path = REPO_ROOT) -> str:
    return Renderer(compile_descriptor_set(root)).render()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUTPUT, help="where to write (default: docs/API.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the protos")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run `python scripts/api_overview.py`", file=sys.stderr)
            return 1
        print(f"{args.out} is current")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
