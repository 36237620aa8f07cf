from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CertificateRequest(_message.Message):
    __slots__ = ("csr", "validity_duration", "node", "pod_namespace", "pod_name", "node_agent")
    CSR_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_DURATION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    POD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_AGENT_FIELD_NUMBER: _ClassVar[int]
    csr: str
    validity_duration: int
    node: str
    pod_namespace: str
    pod_name: str
    node_agent: bool
    def __init__(self, csr: _Optional[str] = ..., validity_duration: _Optional[int] = ..., node: _Optional[str] = ..., pod_namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., node_agent: _Optional[bool] = ...) -> None: ...

class CertificateResponse(_message.Message):
    __slots__ = ("cert_chain", "trust_bundle", "identity")
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    cert_chain: _containers.RepeatedScalarFieldContainer[str]
    trust_bundle: str
    identity: str
    def __init__(self, cert_chain: _Optional[_Iterable[str]] = ..., trust_bundle: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...
