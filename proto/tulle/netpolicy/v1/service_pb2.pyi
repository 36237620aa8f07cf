from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceEndpoint(_message.Message):
    __slots__ = ("ip", "port", "node_name")
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ip: str
    port: int
    node_name: str
    def __init__(self, ip: _Optional[str] = ..., port: _Optional[int] = ..., node_name: _Optional[str] = ...) -> None: ...

class ServicePort(_message.Message):
    __slots__ = ("name", "port", "protocol", "endpoints")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    protocol: str
    endpoints: _containers.RepeatedCompositeFieldContainer[ServiceEndpoint]
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[ServiceEndpoint, _Mapping]]] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "namespace", "cluster_ip", "ports", "resource_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IP_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    cluster_ip: str
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    resource_version: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., cluster_ip: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., resource_version: _Optional[str] = ...) -> None: ...
