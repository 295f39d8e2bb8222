import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LearnwareStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEARNWARE_STATUS_UNSPECIFIED: _ClassVar[LearnwareStatus]
    LEARNWARE_STATUS_PENDING: _ClassVar[LearnwareStatus]
    LEARNWARE_STATUS_USABLE: _ClassVar[LearnwareStatus]
    LEARNWARE_STATUS_REJECTED: _ClassVar[LearnwareStatus]
    LEARNWARE_STATUS_WITHDRAWN: _ClassVar[LearnwareStatus]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_CONTRIBUTOR: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
LEARNWARE_STATUS_UNSPECIFIED: LearnwareStatus
LEARNWARE_STATUS_PENDING: LearnwareStatus
LEARNWARE_STATUS_USABLE: LearnwareStatus
LEARNWARE_STATUS_REJECTED: LearnwareStatus
LEARNWARE_STATUS_WITHDRAWN: LearnwareStatus
ROLE_UNSPECIFIED: Role
ROLE_CONTRIBUTOR: Role
ROLE_USER: Role
ROLE_ADMIN: Role

class BaseModel(_message.Message):
    __slots__ = ("model_id", "sha256")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    sha256: str
    def __init__(self, model_id: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetSchemaRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SpecKindSchema(_message.Message):
    __slots__ = ("kind", "schema_id", "params_json")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    schema_id: str
    params_json: str
    def __init__(self, kind: _Optional[str] = ..., schema_id: _Optional[str] = ..., params_json: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_chunk_bytes", "max_adapter_bytes", "max_spec_bytes", "max_manifest_bytes", "max_package_bytes", "max_page_size", "max_top_k", "max_message_bytes")
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ADAPTER_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SPEC_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MANIFEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PACKAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_chunk_bytes: int
    max_adapter_bytes: int
    max_spec_bytes: int
    max_manifest_bytes: int
    max_package_bytes: int
    max_page_size: int
    max_top_k: int
    max_message_bytes: int
    def __init__(self, max_chunk_bytes: _Optional[int] = ..., max_adapter_bytes: _Optional[int] = ..., max_spec_bytes: _Optional[int] = ..., max_manifest_bytes: _Optional[int] = ..., max_package_bytes: _Optional[int] = ..., max_page_size: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class Schema(_message.Message):
    __slots__ = ("spec_kinds", "base_models", "limits", "default_spec_kind", "protocol_version", "package_format_version")
    SPEC_KINDS_FIELD_NUMBER: _ClassVar[int]
    BASE_MODELS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SPEC_KIND_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    spec_kinds: _containers.RepeatedCompositeFieldContainer[SpecKindSchema]
    base_models: _containers.RepeatedCompositeFieldContainer[BaseModel]
    limits: Limits
    default_spec_kind: str
    protocol_version: str
    package_format_version: int
    def __init__(self, spec_kinds: _Optional[_Iterable[_Union[SpecKindSchema, _Mapping]]] = ..., base_models: _Optional[_Iterable[_Union[BaseModel, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., default_spec_kind: _Optional[str] = ..., protocol_version: _Optional[str] = ..., package_format_version: _Optional[int] = ...) -> None: ...

class SubmitHeader(_message.Message):
    __slots__ = ("manifest_json", "signature", "contributor_key_id", "total_size", "sha256")
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTOR_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    manifest_json: bytes
    signature: bytes
    contributor_key_id: str
    total_size: int
    sha256: str
    def __init__(self, manifest_json: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., contributor_key_id: _Optional[str] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SubmitHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[SubmitHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("id", "status", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: LearnwareStatus
    reason: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[LearnwareStatus, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class DpPart(_message.Message):
    __slots__ = ("what", "epsilon", "delta", "mechanism")
    WHAT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    what: str
    epsilon: float
    delta: float
    mechanism: str
    def __init__(self, what: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., mechanism: _Optional[str] = ...) -> None: ...

class DpSummary(_message.Message):
    __slots__ = ("parts", "total_epsilon", "total_delta", "accountant", "details_json")
    PARTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPSILON_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DELTA_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[DpPart]
    total_epsilon: float
    total_delta: float
    accountant: str
    details_json: str
    def __init__(self, parts: _Optional[_Iterable[_Union[DpPart, _Mapping]]] = ..., total_epsilon: _Optional[float] = ..., total_delta: _Optional[float] = ..., accountant: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...

class SpecInfo(_message.Message):
    __slots__ = ("kind", "schema_id", "dim", "epsilon", "delta", "n")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    kind: str
    schema_id: str
    dim: int
    epsilon: float
    delta: float
    n: int
    def __init__(self, kind: _Optional[str] = ..., schema_id: _Optional[str] = ..., dim: _Optional[int] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., n: _Optional[int] = ...) -> None: ...

class LearnwareInfo(_message.Message):
    __slots__ = ("id", "name", "domain", "task", "description", "license", "base_model", "contributor_key_id", "contributor_name", "status", "reason", "created_at", "updated_at", "package_size", "package_sha256", "specs", "dp", "version", "downloads")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTOR_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SPECS_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOWNLOADS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    domain: str
    task: str
    description: str
    license: str
    base_model: BaseModel
    contributor_key_id: str
    contributor_name: str
    status: LearnwareStatus
    reason: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    package_size: int
    package_sha256: str
    specs: _containers.RepeatedCompositeFieldContainer[SpecInfo]
    dp: DpSummary
    version: int
    downloads: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., domain: _Optional[str] = ..., task: _Optional[str] = ..., description: _Optional[str] = ..., license: _Optional[str] = ..., base_model: _Optional[_Union[BaseModel, _Mapping]] = ..., contributor_key_id: _Optional[str] = ..., contributor_name: _Optional[str] = ..., status: _Optional[_Union[LearnwareStatus, str]] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., package_size: _Optional[int] = ..., package_sha256: _Optional[str] = ..., specs: _Optional[_Iterable[_Union[SpecInfo, _Mapping]]] = ..., dp: _Optional[_Union[DpSummary, _Mapping]] = ..., version: _Optional[int] = ..., downloads: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "domain", "task", "base_model_id", "status", "contributor_key_id", "spec_kind", "license", "all_versions")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTOR_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_KIND_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    domain: str
    task: str
    base_model_id: str
    status: LearnwareStatus
    contributor_key_id: str
    spec_kind: str
    license: str
    all_versions: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., domain: _Optional[str] = ..., task: _Optional[str] = ..., base_model_id: _Optional[str] = ..., status: _Optional[_Union[LearnwareStatus, str]] = ..., contributor_key_id: _Optional[str] = ..., spec_kind: _Optional[str] = ..., license: _Optional[str] = ..., all_versions: bool = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("learnwares", "next_page_token")
    LEARNWARES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    learnwares: _containers.RepeatedCompositeFieldContainer[LearnwareInfo]
    next_page_token: str
    def __init__(self, learnwares: _Optional[_Iterable[_Union[LearnwareInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class QuerySpec(_message.Message):
    __slots__ = ("kind", "schema_id", "vector", "dim", "metadata_json")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    schema_id: str
    vector: bytes
    dim: int
    metadata_json: str
    def __init__(self, kind: _Optional[str] = ..., schema_id: _Optional[str] = ..., vector: _Optional[bytes] = ..., dim: _Optional[int] = ..., metadata_json: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("spec", "top_k", "domain", "task", "base_model_id", "license", "all_versions", "more_specs", "ranking")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MORE_SPECS_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    spec: QuerySpec
    top_k: int
    domain: str
    task: str
    base_model_id: str
    license: str
    all_versions: bool
    more_specs: _containers.RepeatedCompositeFieldContainer[QuerySpec]
    ranking: str
    def __init__(self, spec: _Optional[_Union[QuerySpec, _Mapping]] = ..., top_k: _Optional[int] = ..., domain: _Optional[str] = ..., task: _Optional[str] = ..., base_model_id: _Optional[str] = ..., license: _Optional[str] = ..., all_versions: bool = ..., more_specs: _Optional[_Iterable[_Union[QuerySpec, _Mapping]]] = ..., ranking: _Optional[str] = ...) -> None: ...

class Why(_message.Message):
    __slots__ = ("kind", "schema_id", "rank", "text")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    schema_id: str
    rank: int
    text: str
    def __init__(self, kind: _Optional[str] = ..., schema_id: _Optional[str] = ..., rank: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("learnware", "score", "distance", "why")
    LEARNWARE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    learnware: LearnwareInfo
    score: float
    distance: float
    why: Why
    def __init__(self, learnware: _Optional[_Union[LearnwareInfo, _Mapping]] = ..., score: _Optional[float] = ..., distance: _Optional[float] = ..., why: _Optional[_Union[Why, _Mapping]] = ...) -> None: ...

class SearchConfidence(_message.Message):
    __slots__ = ("first_right", "margin", "method")
    FIRST_RIGHT_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    first_right: float
    margin: float
    method: str
    def __init__(self, first_right: _Optional[float] = ..., margin: _Optional[float] = ..., method: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "confidence")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    confidence: SearchConfidence
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., confidence: _Optional[_Union[SearchConfidence, _Mapping]] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("id", "offset")
    ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    id: str
    offset: int
    def __init__(self, id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class FetchHeader(_message.Message):
    __slots__ = ("id", "total_size", "sha256", "manifest_json", "signature", "contributor_key_id", "contributor_public_key", "info")
    ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTOR_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTOR_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    id: str
    total_size: int
    sha256: str
    manifest_json: bytes
    signature: bytes
    contributor_key_id: str
    contributor_public_key: bytes
    info: LearnwareInfo
    def __init__(self, id: _Optional[str] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ..., manifest_json: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., contributor_key_id: _Optional[str] = ..., contributor_public_key: _Optional[bytes] = ..., info: _Optional[_Union[LearnwareInfo, _Mapping]] = ...) -> None: ...

class FetchChunk(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: FetchHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[FetchHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class WithdrawRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[LearnwareInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[LearnwareInfo, _Mapping]]] = ...) -> None: ...

class RegisterKeyRequest(_message.Message):
    __slots__ = ("public_key", "role", "name")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    role: Role
    name: str
    def __init__(self, public_key: _Optional[bytes] = ..., role: _Optional[_Union[Role, str]] = ..., name: _Optional[str] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("key_id", "name", "role", "public_key", "created_at", "revoked", "revoked_at", "revoke_reason")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKE_REASON_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    role: Role
    public_key: bytes
    created_at: _timestamp_pb2.Timestamp
    revoked: bool
    revoked_at: _timestamp_pb2.Timestamp
    revoke_reason: str
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., public_key: _Optional[bytes] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked: bool = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_reason: _Optional[str] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("key_id", "reason")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    reason: str
    def __init__(self, key_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("include_revoked",)
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    include_revoked: bool
    def __init__(self, include_revoked: bool = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeyInfo, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Stats(_message.Message):
    __slots__ = ("learnwares_by_status", "learnwares_by_kind", "learnwares_by_domain", "learnwares_total", "blob_bytes", "blob_count", "keys_total", "uptime_s", "started_at", "server_version", "index_applied_change", "index_newest_change", "index_lag_s")
    class LearnwaresByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LearnwaresByKindEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LearnwaresByDomainEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LEARNWARES_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    LEARNWARES_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    LEARNWARES_BY_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    LEARNWARES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    KEYS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_APPLIED_CHANGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_NEWEST_CHANGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_LAG_S_FIELD_NUMBER: _ClassVar[int]
    learnwares_by_status: _containers.ScalarMap[str, int]
    learnwares_by_kind: _containers.ScalarMap[str, int]
    learnwares_by_domain: _containers.ScalarMap[str, int]
    learnwares_total: int
    blob_bytes: int
    blob_count: int
    keys_total: int
    uptime_s: float
    started_at: _timestamp_pb2.Timestamp
    server_version: str
    index_applied_change: int
    index_newest_change: int
    index_lag_s: float
    def __init__(self, learnwares_by_status: _Optional[_Mapping[str, int]] = ..., learnwares_by_kind: _Optional[_Mapping[str, int]] = ..., learnwares_by_domain: _Optional[_Mapping[str, int]] = ..., learnwares_total: _Optional[int] = ..., blob_bytes: _Optional[int] = ..., blob_count: _Optional[int] = ..., keys_total: _Optional[int] = ..., uptime_s: _Optional[float] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., server_version: _Optional[str] = ..., index_applied_change: _Optional[int] = ..., index_newest_change: _Optional[int] = ..., index_lag_s: _Optional[float] = ...) -> None: ...
