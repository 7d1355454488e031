"""Channels live in the client distribution (lstm_stack_client.channels), which the services depend
on; this module keeps the services' imports (``from service_common.channels import open_channel``)."""

from __future__ import annotations

from lstm_stack_client.channels import (
    BearerTokenClientInterceptor,
    Pem,
    channel_credentials,
    message_size_options,
    open_channel,
    read_pem,
)

__all__ = [
    "BearerTokenClientInterceptor",
    "Pem",
    "channel_credentials",
    "message_size_options",
    "open_channel",
    "read_pem",
]
