"""Terminal channels: how a signed envelope reaches a terminal's ``requests`` topic (QoS 1).

- ``IotDataChannel``: AWS IoT Core data plane (``iot-data`` Publish), used on AWS.
- ``MqttChannel``: any MQTT 3.1.1 broker through paho (the local stack); paho is imported lazily so
  Lambda packages need not ship it.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import protocol
from chalicelib.adapters.aws import client
from chalicelib.exceptions import ChannelError


class IotDataChannel:
    def __init__(self, endpoint: str = "") -> None:
        self._endpoint = endpoint

    def publish(self, terminal_id: str, envelope: dict[str, Any]) -> None:
        try:
            endpoint = f"https://{self._endpoint}" if self._endpoint else None
            client("iot-data", endpoint).publish(
                topic=protocol.topic_for(terminal_id, "requests"), qos=1, payload=protocol.encode(envelope)
            )
        except (ClientError, BotoCoreError) as exc:
            raise ChannelError(f"IoT publish to {terminal_id} failed: {exc}") from exc


class MqttChannel:
    """One persistent paho connection per process; publishes wait for the broker's PUBACK."""

    def __init__(self, host: str, port: int, client_id: str = "", publish_timeout_s: float = 3.0) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self._timeout = publish_timeout_s
        self._connected = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_socket_open = disable_nagle
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any = None) -> None:
        if not getattr(reason, "is_failure", False):
            self._connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self._connected.clear()

    def wait_connected(self, timeout_s: float) -> None:
        """Block until the broker accepted the connection; ChannelError after ``timeout_s``."""
        if not self._connected.wait(timeout_s):
            raise ChannelError(f"MQTT broker not connected after {timeout_s:.0f} s")

    def publish(self, terminal_id: str, envelope: dict[str, Any]) -> None:
        if not self._connected.wait(self._timeout):
            raise ChannelError("MQTT broker not connected")
        info = self._client.publish(protocol.topic_for(terminal_id, "requests"), protocol.encode(envelope), qos=1)
        if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
            raise ChannelError(f"MQTT publish to {terminal_id} failed: rc={info.rc}")
        try:
            info.wait_for_publish(self._timeout)
        except (RuntimeError, ValueError) as exc:
            raise ChannelError(f"MQTT publish to {terminal_id} failed: {exc}") from exc
        if not info.is_published():
            raise ChannelError(f"MQTT publish to {terminal_id} not acknowledged by the broker")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def disable_nagle(_client: Any, _userdata: Any, sock: Any) -> None:
    """paho's ``on_socket_open``: Nagle would hold small QoS-1 publishes back by up to 40 ms (the
    peer's delayed ACK), on the synchronous path and in every client that answers on it."""
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
