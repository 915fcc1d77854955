from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetSystemRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SystemInfo(_message.Message):
    __slots__ = ("version", "root_model", "root_weights", "root_weights_sha256", "family", "root_params", "num_blocks", "device", "num_tasks", "total_params", "min_image_size", "max_image_size", "executor")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROOT_MODEL_FIELD_NUMBER: _ClassVar[int]
    ROOT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ROOT_WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    ROOT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NUM_TASKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MIN_IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    version: str
    root_model: str
    root_weights: str
    root_weights_sha256: str
    family: str
    root_params: int
    num_blocks: int
    device: str
    num_tasks: int
    total_params: int
    min_image_size: int
    max_image_size: int
    executor: str
    def __init__(self, version: _Optional[str] = ..., root_model: _Optional[str] = ..., root_weights: _Optional[str] = ..., root_weights_sha256: _Optional[str] = ..., family: _Optional[str] = ..., root_params: _Optional[int] = ..., num_blocks: _Optional[int] = ..., device: _Optional[str] = ..., num_tasks: _Optional[int] = ..., total_params: _Optional[int] = ..., min_image_size: _Optional[int] = ..., max_image_size: _Optional[int] = ..., executor: _Optional[str] = ...) -> None: ...

class AddTaskRequest(_message.Message):
    __slots__ = ("spec", "examples")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    spec: TaskSpec
    examples: ExampleBatch
    def __init__(self, spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., examples: _Optional[_Union[ExampleBatch, _Mapping]] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("name", "class_names", "budget", "scale_factor", "validation_fraction", "seed", "policy", "learned_mu")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCALE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LEARNED_MU_FIELD_NUMBER: _ClassVar[int]
    name: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    budget: SearchBudget
    scale_factor: float
    validation_fraction: float
    seed: int
    policy: str
    learned_mu: bool
    def __init__(self, name: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., budget: _Optional[_Union[SearchBudget, _Mapping]] = ..., scale_factor: _Optional[float] = ..., validation_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., policy: _Optional[str] = ..., learned_mu: _Optional[bool] = ...) -> None: ...

class SearchBudget(_message.Message):
    __slots__ = ("generations", "candidates_per_generation", "batch_size", "seconds", "epochs", "views")
    GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_PER_GENERATION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    generations: int
    candidates_per_generation: int
    batch_size: int
    seconds: float
    epochs: int
    views: int
    def __init__(self, generations: _Optional[int] = ..., candidates_per_generation: _Optional[int] = ..., batch_size: _Optional[int] = ..., seconds: _Optional[float] = ..., epochs: _Optional[int] = ..., views: _Optional[int] = ...) -> None: ...

class ExampleBatch(_message.Message):
    __slots__ = ("examples",)
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedCompositeFieldContainer[Example]
    def __init__(self, examples: _Optional[_Iterable[_Union[Example, _Mapping]]] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("image", "label")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    label: int
    def __init__(self, image: _Optional[bytes] = ..., label: _Optional[int] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("name", "kind", "task", "state", "done", "progress", "error", "created_at", "updated_at", "num_examples", "result", "task_version", "origin")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Operation.State]
        QUEUED: _ClassVar[Operation.State]
        RUNNING: _ClassVar[Operation.State]
        SUCCEEDED: _ClassVar[Operation.State]
        FAILED: _ClassVar[Operation.State]
        CANCELLED: _ClassVar[Operation.State]
    STATE_UNSPECIFIED: Operation.State
    QUEUED: Operation.State
    RUNNING: Operation.State
    SUCCEEDED: Operation.State
    FAILED: Operation.State
    CANCELLED: Operation.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    task: str
    state: Operation.State
    done: bool
    progress: Progress
    error: Error
    created_at: float
    updated_at: float
    num_examples: int
    result: str
    task_version: int
    origin: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., task: _Optional[str] = ..., state: _Optional[_Union[Operation.State, str]] = ..., done: _Optional[bool] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., num_examples: _Optional[int] = ..., result: _Optional[str] = ..., task_version: _Optional[int] = ..., origin: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("phase", "generation", "generations_total", "candidates_done", "candidates_total", "best_validation_accuracy", "best_score", "params_added", "elapsed_seconds", "eta_seconds", "budget_seconds", "serving_version", "serving_kind", "serving_accuracy", "first_served_seconds", "published")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_DONE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BEST_VALIDATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_ADDED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_KIND_FIELD_NUMBER: _ClassVar[int]
    SERVING_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FIRST_SERVED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    phase: str
    generation: int
    generations_total: int
    candidates_done: int
    candidates_total: int
    best_validation_accuracy: float
    best_score: float
    params_added: int
    elapsed_seconds: float
    eta_seconds: float
    budget_seconds: float
    serving_version: int
    serving_kind: str
    serving_accuracy: float
    first_served_seconds: float
    published: int
    def __init__(self, phase: _Optional[str] = ..., generation: _Optional[int] = ..., generations_total: _Optional[int] = ..., candidates_done: _Optional[int] = ..., candidates_total: _Optional[int] = ..., best_validation_accuracy: _Optional[float] = ..., best_score: _Optional[float] = ..., params_added: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., budget_seconds: _Optional[float] = ..., serving_version: _Optional[int] = ..., serving_kind: _Optional[str] = ..., serving_accuracy: _Optional[float] = ..., first_served_seconds: _Optional[float] = ..., published: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class GetOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListOperationsRequest(_message.Message):
    __slots__ = ("task", "state", "page_size", "page_token")
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task: str
    state: Operation.State
    page_size: int
    page_token: str
    def __init__(self, task: _Optional[str] = ..., state: _Optional[_Union[Operation.State, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOperationsResponse(_message.Message):
    __slots__ = ("operations", "next_page_token")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    next_page_token: str
    def __init__(self, operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WaitOperationRequest(_message.Message):
    __slots__ = ("name", "timeout_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout_seconds: float
    def __init__(self, name: _Optional[str] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class CancelOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("task", "images", "raw_images", "top_k", "version")
    TASK_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    RAW_IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    task: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    raw_images: _containers.RepeatedCompositeFieldContainer[RawImage]
    top_k: int
    version: int
    def __init__(self, task: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., raw_images: _Optional[_Iterable[_Union[RawImage, _Mapping]]] = ..., top_k: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class PredictManyRequest(_message.Message):
    __slots__ = ("tasks", "images", "raw_images", "top_k")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    RAW_IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedScalarFieldContainer[str]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    raw_images: _containers.RepeatedCompositeFieldContainer[RawImage]
    top_k: int
    def __init__(self, tasks: _Optional[_Iterable[str]] = ..., images: _Optional[_Iterable[bytes]] = ..., raw_images: _Optional[_Iterable[_Union[RawImage, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class PredictManyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PredictResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[PredictResponse, _Mapping]]] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("height", "width", "channels", "data")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    data: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("task", "predictions")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    task: str
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, task: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("name", "index", "probability")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    probability: float
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DescribeTaskRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("name", "state", "class_names", "validation_accuracy", "score", "params_added", "params_accounted", "params_total", "path", "hparams", "created_at", "golden_digest", "scale_factor", "search_seconds", "candidates_trained", "num_examples", "probe_validation_accuracy", "gain_over_probe", "holdout_size", "chance_accuracy", "image_size", "probe_cv_accuracy", "version", "versions", "served_version", "kind", "improving")
    class HparamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_ADDED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_ACCOUNTED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SCALE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    SEARCH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_TRAINED_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PROBE_VALIDATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    GAIN_OVER_PROBE_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANCE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROBE_CV_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IMPROVING_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    validation_accuracy: float
    score: float
    params_added: int
    params_accounted: float
    params_total: int
    path: _containers.RepeatedCompositeFieldContainer[PathComponent]
    hparams: _containers.ScalarMap[str, str]
    created_at: float
    golden_digest: str
    scale_factor: float
    search_seconds: float
    candidates_trained: int
    num_examples: int
    probe_validation_accuracy: float
    gain_over_probe: float
    holdout_size: int
    chance_accuracy: float
    image_size: int
    probe_cv_accuracy: float
    version: int
    versions: _containers.RepeatedCompositeFieldContainer[TaskVersion]
    served_version: int
    kind: str
    improving: bool
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., validation_accuracy: _Optional[float] = ..., score: _Optional[float] = ..., params_added: _Optional[int] = ..., params_accounted: _Optional[float] = ..., params_total: _Optional[int] = ..., path: _Optional[_Iterable[_Union[PathComponent, _Mapping]]] = ..., hparams: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[float] = ..., golden_digest: _Optional[str] = ..., scale_factor: _Optional[float] = ..., search_seconds: _Optional[float] = ..., candidates_trained: _Optional[int] = ..., num_examples: _Optional[int] = ..., probe_validation_accuracy: _Optional[float] = ..., gain_over_probe: _Optional[float] = ..., holdout_size: _Optional[int] = ..., chance_accuracy: _Optional[float] = ..., image_size: _Optional[int] = ..., probe_cv_accuracy: _Optional[float] = ..., version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[TaskVersion, _Mapping]]] = ..., served_version: _Optional[int] = ..., kind: _Optional[str] = ..., improving: _Optional[bool] = ...) -> None: ...

class TaskVersion(_message.Message):
    __slots__ = ("version", "served", "validation_accuracy", "params_added", "created_at", "golden_digest", "kind", "improved_from")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_ADDED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IMPROVED_FROM_FIELD_NUMBER: _ClassVar[int]
    version: int
    served: bool
    validation_accuracy: float
    params_added: int
    created_at: float
    golden_digest: str
    kind: str
    improved_from: int
    def __init__(self, version: _Optional[int] = ..., served: _Optional[bool] = ..., validation_accuracy: _Optional[float] = ..., params_added: _Optional[int] = ..., created_at: _Optional[float] = ..., golden_digest: _Optional[str] = ..., kind: _Optional[str] = ..., improved_from: _Optional[int] = ...) -> None: ...

class PathComponent(_message.Message):
    __slots__ = ("name", "id", "kind", "num_params", "owner", "created_by_task", "shared_with", "num_shared_with")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_TASK_FIELD_NUMBER: _ClassVar[int]
    SHARED_WITH_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARED_WITH_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    kind: str
    num_params: int
    owner: str
    created_by_task: bool
    shared_with: _containers.RepeatedScalarFieldContainer[str]
    num_shared_with: int
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., kind: _Optional[str] = ..., num_params: _Optional[int] = ..., owner: _Optional[str] = ..., created_by_task: _Optional[bool] = ..., shared_with: _Optional[_Iterable[str]] = ..., num_shared_with: _Optional[int] = ...) -> None: ...

class DeleteTaskRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteTaskResponse(_message.Message):
    __slots__ = ("freed_components", "params_freed")
    FREED_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FREED_FIELD_NUMBER: _ClassVar[int]
    freed_components: _containers.RepeatedScalarFieldContainer[str]
    params_freed: int
    def __init__(self, freed_components: _Optional[_Iterable[str]] = ..., params_freed: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("dest_dir",)
    DEST_DIR_FIELD_NUMBER: _ClassVar[int]
    dest_dir: str
    def __init__(self, dest_dir: _Optional[str] = ...) -> None: ...

class SnapshotInfo(_message.Message):
    __slots__ = ("path", "manifest_sha256", "num_files", "num_bytes", "num_tasks")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    NUM_FILES_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_TASKS_FIELD_NUMBER: _ClassVar[int]
    path: str
    manifest_sha256: str
    num_files: int
    num_bytes: int
    num_tasks: int
    def __init__(self, path: _Optional[str] = ..., manifest_sha256: _Optional[str] = ..., num_files: _Optional[int] = ..., num_bytes: _Optional[int] = ..., num_tasks: _Optional[int] = ...) -> None: ...

class StreamSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyTaskRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class VerifyTaskResponse(_message.Message):
    __slots__ = ("name", "identical", "golden_digest", "digest", "probe_images")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTICAL_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROBE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    identical: bool
    golden_digest: str
    digest: str
    probe_images: int
    def __init__(self, name: _Optional[str] = ..., identical: _Optional[bool] = ..., golden_digest: _Optional[str] = ..., digest: _Optional[str] = ..., probe_images: _Optional[int] = ...) -> None: ...

class ExportTaskRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ImproveTaskRequest(_message.Message):
    __slots__ = ("name", "budget", "seed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    name: str
    budget: SearchBudget
    seed: int
    def __init__(self, name: _Optional[str] = ..., budget: _Optional[_Union[SearchBudget, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class SetTaskVersionRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteTaskVersionRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("file", "data", "last", "sha256", "size")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    file: str
    data: bytes
    last: bool
    sha256: str
    size: int
    def __init__(self, file: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("src_dir",)
    SRC_DIR_FIELD_NUMBER: _ClassVar[int]
    src_dir: str
    def __init__(self, src_dir: _Optional[str] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("num_tasks", "manifest_sha256", "tasks")
    NUM_TASKS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    num_tasks: int
    manifest_sha256: str
    tasks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, num_tasks: _Optional[int] = ..., manifest_sha256: _Optional[str] = ..., tasks: _Optional[_Iterable[str]] = ...) -> None: ...
