from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AdminNetworkPolicy(_message.Message):
    __slots__ = ("name", "spec_json", "resource_version", "baseline")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec_json: str
    resource_version: str
    baseline: bool
    def __init__(self, name: _Optional[str] = ..., spec_json: _Optional[str] = ..., resource_version: _Optional[str] = ..., baseline: _Optional[bool] = ...) -> None: ...
