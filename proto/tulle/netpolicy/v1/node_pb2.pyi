from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("name", "underlay_ip", "pod_cidr", "vtep_mac")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    VTEP_MAC_FIELD_NUMBER: _ClassVar[int]
    name: str
    underlay_ip: str
    pod_cidr: str
    vtep_mac: str
    def __init__(self, name: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., pod_cidr: _Optional[str] = ..., vtep_mac: _Optional[str] = ...) -> None: ...
