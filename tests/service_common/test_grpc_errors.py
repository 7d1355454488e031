"""map_errors: every domain error becomes its precise status (never UNKNOWN), unary and streaming alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from service_common import errors
from service_common.grpc_errors import STATUS_BY_ERROR, map_errors, status_for
from service_common.server import build_server
from service_common.settings import ServerSettings

SERVICE = "lstm_stack.test.Errors"
ERRORS_BY_NAME: dict[str, type[Exception]] = {cls.__name__: cls for cls in STATUS_BY_ERROR}
ERRORS_BY_NAME.update({"ZeroDivisionError": ZeroDivisionError, "KeyError": KeyError})


class Raiser:
    """Raise the exception class named in the request; stream one item first when streaming."""

    @map_errors
    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise ERRORS_BY_NAME[request.decode()]("expected a thing, got another")

    @map_errors
    async def stream(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        raise ERRORS_BY_NAME[request.decode()]("expected a thing, got another")

    @map_errors
    async def aborts(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "aborted by hand")
        return b""

    def register(self, server: grpc.aio.Server) -> list[str]:
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            "Aborts": grpc.unary_unary_rpc_method_handler(self.aborts),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        return [SERVICE]


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    settings = ServerSettings(
        host="127.0.0.1", port=0, store=tmp_path_factory.mktemp("errors"), executor_threads=4
    )
    server, port = build_server(settings, Raiser().register)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    server.stop(0)


EXPECTED = [(cls.__name__, code) for cls, code in STATUS_BY_ERROR.items()] + [
    ("ZeroDivisionError", grpc.StatusCode.INTERNAL),
    ("KeyError", grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("name", "code"), EXPECTED, ids=[name for name, _ in EXPECTED])
def test_unary_errors_map_to_their_status(channel: grpc.Channel, name: str, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        channel.unary_unary(f"/{SERVICE}/Unary")(name.encode(), timeout=10)
    assert excinfo.value.code() == code
    if code == grpc.StatusCode.INTERNAL:
        assert excinfo.value.details().startswith(f"internal error: {name}")
    else:
        assert excinfo.value.details() == "expected a thing, got another"


@pytest.mark.parametrize(("name", "code"), EXPECTED, ids=[name for name, _ in EXPECTED])
def test_streaming_errors_map_to_their_status(
    channel: grpc.Channel, name: str, code: grpc.StatusCode
) -> None:
    replies = channel.unary_stream(f"/{SERVICE}/Stream")(name.encode(), timeout=10)
    assert next(replies) == b"first"
    with pytest.raises(grpc.RpcError) as excinfo:
        next(replies)
    assert excinfo.value.code() == code


def test_explicit_abort_passes_through(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        channel.unary_unary(f"/{SERVICE}/Aborts")(b"", timeout=10)
    assert (excinfo.value.code(), excinfo.value.details()) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "aborted by hand",
    )


def test_every_domain_error_has_a_status() -> None:
    for cls in errors.ServiceError.__subclasses__():
        code, message = status_for(cls("m"))
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) and message == "m"
    # Subclasses map like their parent.
    assert status_for(type("Sub", (errors.NotFound,), {})("x"))[0] == grpc.StatusCode.NOT_FOUND
