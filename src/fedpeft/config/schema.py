"""The typed configuration of one run. Every field says what it is for; unknown keys are errors."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core.core_schema import ValidationInfo

from fedpeft.config.section import PATH_MAX, Section, known_home
from fedpeft.config.training import EvalConfig, FLConfig, FlowerConfig, OutputConfig, TrainConfig
from fedpeft.data.partition import PARTITIONS
from fedpeft.data.tasks import TASKS
from fedpeft.fl.sampling import clients_per_round
from fedpeft.models.methods import METHODS
from fedpeft.models.methods.config_keys import fold_legacy_keys, legacy_default, resolve_method_args
from fedpeft.registry import summary_of

__all__ = [
    "PATH_MAX",
    "DataConfig",
    "EvalConfig",
    "FLConfig",
    "FlowerConfig",
    "ModelConfig",
    "OutputConfig",
    "PeftConfig",
    "RunConfig",
    "Section",
    "TrainConfig",
]


class ModelConfig(Section):
    name: str = Field(
        "builtin:small",
        max_length=PATH_MAX,
        description="Hub id, local model directory, or builtin:small / tiny / micro / micro64.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the frozen base (with quantization=4bit: the compute dtype)."
    )
    device: str = Field(
        "auto", description="Where the model runs: auto (a CUDA GPU if torch sees one), cpu, cuda, cuda:N."
    )
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none",
        description="Load the base's linear weights through bitsandbytes: 8bit (LLM.int8) or 4bit (NF4 with double "
        "quantisation, as QLoRA); needs `pip install 'fedpeft[quant]'`. Adapters train in full precision.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return known_home(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"{v!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps")
        return v


MethodName = Literal[METHODS.names()]  # every registered PEFT method (fedpeft.models.methods): no edit here


class PeftConfig(Section):
    method: MethodName = Field(
        "lora",
        description=f"PEFT method: {', '.join(METHODS.names())} (`fedpeft methods` describes each and its settings).",
    )
    r: int = Field(8, description="LoRA rank (> 0).")
    alpha: float = Field(16.0, description="LoRA scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Module names to adapt, or 'auto' for the architecture's attention projections."
    )
    method_args: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="Settings of the method, e.g. {use_dora: true} for lora (`fedpeft methods` lists them); "
        "resolved to every setting of the method. The older keys peft.use_rslora, use_dora, num_virtual_tokens, "
        "bottleneck_size and bottleneck_activation are still read into it.",
    )
    client_ranks: list[int] | None = Field(
        None,
        description="LoRA rank of each client (client c trains rank client_ranks[c % len]) inside the global "
        "adapter of rank peft.r; null: every client uses peft.r.",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_method_keys(cls, data: Any) -> Any:
        return fold_legacy_keys(data, cls.model_fields["method"].default)

    @field_validator("r")
    @classmethod
    def _positive_rank(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"must be a positive integer, got {v}")
        return v

    @field_validator("method_args")
    @classmethod
    def _method_args(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "method" not in info.data:  # an invalid method is reported on its own
            return v
        return resolve_method_args(info.data["method"], v)

    def method_settings(self) -> Any:
        """The method's ``Settings`` dataclass, from ``method_args``."""
        return METHODS.get(self.method).parse_args(self.method_args)

    # Read-only views of the settings that were peft.* fields before peft.method_args; a method that does
    # not take one gives its old default.
    @property
    def use_rslora(self) -> bool:
        return self.method_args.get("use_rslora", legacy_default("use_rslora"))

    @property
    def use_dora(self) -> bool:
        return self.method_args.get("use_dora", legacy_default("use_dora"))

    @property
    def num_virtual_tokens(self) -> int:
        return self.method_args.get("num_virtual_tokens", legacy_default("num_virtual_tokens"))

    @property
    def bottleneck_size(self) -> int:
        return self.method_args.get("bottleneck_size", legacy_default("bottleneck_size"))

    @property
    def bottleneck_activation(self) -> str:
        return self.method_args.get("bottleneck_activation", legacy_default("bottleneck_activation"))

    @model_validator(mode="after")
    def _client_ranks(self) -> PeftConfig:
        ranks = self.client_ranks
        if ranks is not None and not METHODS.get(self.method).trains_lora_pairs:
            raise ValueError(f"peft.client_ranks are LoRA ranks; peft.method={self.method} has none")
        if ranks is not None and (not ranks or any(not 0 < r <= self.r for r in ranks)):
            raise ValueError(
                f"peft.client_ranks={ranks} must be a non-empty list of ranks in 1..peft.r={self.r} "
                "(peft.r is the global adapter's rank)"
            )
        return self


FileName = Annotated[str, Field(max_length=PATH_MAX)]
TaskName = Literal[TASKS.names()]  # every registered task (fedpeft.data.tasks): a new task file needs no edit here
PartitionName = Literal[PARTITIONS.names()]  # every registered partition scheme (fedpeft.data.partition)


class DataConfig(Section):
    source: str = Field(
        "stdlib",
        max_length=PATH_MAX,
        description="Where rows come from: 'stdlib' (built-in corpus), a known hub id (e.g. "
        "databricks/databricks-dolly-15k, nyu-mll/glue/cola) or a local .json/.jsonl/.csv/.parquet file.",
    )
    schema_: str | None = Field(
        None,
        alias="schema",
        description="Published schema of a local file: dolly, guanaco-commits, cola, sst2, codexglue-defect, "
        "codexglue-code-to-text, codexglue-completion, codexglue-clone, codexglue-search.",
    )
    task: TaskName = Field(
        "instruction", description="; ".join(f"{name}: {TASKS.get(name).summary}" for name in TASKS.names()) + "."
    )
    modules: list[str] | None = Field(None, description="Restrict the stdlib corpus to these top-level modules.")
    max_rows: int | None = Field(None, gt=0, description="Keep a seeded random subset of this many rows.")
    test_size: int = Field(64, gt=0, description="Rows held out as the global test split.")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of each client's rows held out for validation."
    )
    partition: PartitionName = Field(
        "iid",
        description="; ".join(f"{name}: {summary_of(PARTITIONS.get(name))}" for name in PARTITIONS.names()) + ".",
    )
    partition_key: Literal["category", "label"] = Field(
        "category",
        description="What data.partition groups rows by: category (the module, project or Dolly category) or label "
        "(the class of a classification task: S0's label-imbalanced split is partition=dirichlet by label).",
    )
    shards_per_client: int = Field(2, gt=0, description="Shards each client receives with partition=shards.")
    dirichlet_alpha: float = Field(0.5, gt=0, description="Concentration for partition=dirichlet (small = skewed).")
    quantity_range: tuple[float, float] = Field(
        (0.03, 0.3), description="[a, b] for partition=quantity: fraction of the remaining pool each client takes."
    )
    min_client_size: int = Field(1, ge=1, description="Fewest rows a client may hold; a split below it is an error.")
    max_length: int = Field(256, gt=8, description="Token cutoff per example (prompt + response).")
    train_on_inputs: bool = Field(False, description="Also compute the loss on prompt tokens (false masks them).")
    template: Literal["alpaca", "question-answer"] = Field(
        "alpaca",
        description="Prompt template: alpaca (Shepherd/FedIT) or question-answer (Astraios: "
        "'Question: {instruction}\\n\\nAnswer:\\n{response}').",
    )
    server_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of the training rows the server holds as public data (FedKD's teacher and "
        "distillation data, dynamic-token's reference set); 0 gives the server none.",
    )
    server_split: Literal["held_out", "shared"] = Field(
        "held_out",
        description="held_out: the server's rows are rows no client holds (beyond data.max_rows when there are "
        "enough, so the clients' split is unchanged; else taken out of the client pool), so server-side strategies "
        "see extra data (FedKD's published setting); shared: they are a sample of the clients' own training rows, "
        "so no strategy sees more data than FedAvg does (the fair setting).",
    )

    client_files: list[FileName] | None = Field(
        None,
        description="One local file per client, in data.schema (client i trains on the i-th), instead of a seeded "
        "partition of data.source: rehearses on one machine (runtime local or flower-sim) what a deployment with "
        "data.node_data runs, client i computing what a SuperNode given that file computes. One per fl.clients.",
    )
    client_eval_files: list[FileName] | None = Field(
        None,
        description="With data.client_files: each client's validation file, in the same order; null: each client "
        "carves data.val_fraction of its rows, seeded.",
    )
    node_data: bool = Field(
        False,
        description="Each client's rows are on its own SuperNode (`fedpeft supernode --data FILE`) and the server "
        "holds none; runtime=flower-deployment only (rehearse it on one machine with data.client_files).",
    )
    server_source: str | None = Field(
        None,
        max_length=PATH_MAX,
        description="With data.client_files or data.node_data: the server's own test rows, a local file or hub id "
        "in data.server_schema (every row is a test row, up to data.test_size); null: no server test split.",
    )
    server_schema: str | None = Field(None, description="Published schema of data.server_source (as data.schema).")

    @field_validator("source", "server_source")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        return v if v is None else known_home(v)

    @field_validator("client_files", "client_eval_files")
    @classmethod
    def _files(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("names no file; list one per client or leave it null")
        for path in v or []:
            if "\x00" in path:
                raise ValueError("contains a NUL character (\\x00), which no name, path or setting may")
            known_home(path)
        return v

    @model_validator(mode="after")
    def _client_files(self) -> DataConfig:
        """Rows from each client's own file (data.client_files, data.node_data) replace the split of
        data.source, and the server's test rows come from data.server_source."""
        own = "data.client_files" if self.client_files else "data.node_data=true" if self.node_data else None
        if self.client_files and self.node_data:
            raise ValueError(
                "data.client_files and data.node_data=true exclude each other: the files are on this machine "
                "(a rehearsal) or on each SuperNode (a deployment)"
            )
        if self.client_eval_files is not None and not self.client_files:
            raise ValueError("data.client_eval_files are validation files for data.client_files, which is not set")
        if self.client_eval_files is not None and len(self.client_eval_files) != len(self.client_files):
            raise ValueError(
                f"data.client_eval_files has {len(self.client_eval_files)} file(s) for {len(self.client_files)} "
                "data.client_files; give one per client, in the same order"
            )
        if self.server_schema is not None and self.server_source is None:
            raise ValueError("data.server_schema names the schema of data.server_source, which is not set")
        if own is None:
            if self.server_source is not None:
                raise ValueError(
                    "data.server_source is the server's test rows when the clients bring their own "
                    "(data.client_files or data.node_data=true); a split of data.source takes its test rows from it"
                )
            return self
        if self.source != "stdlib":
            raise ValueError(
                f"{own}: each client's rows come from its own file, so data.source={self.source!r} would not be "
                "read; leave data.source unset (the server's test rows go in data.server_source)"
            )
        if self.server_fraction > 0:
            raise ValueError(
                f"{own}: the server holds no client rows, so data.server_fraction={self.server_fraction} has none to "
                "take; set it to 0 (the server's own test rows go in data.server_source)"
            )
        return self


class RunConfig(Section):
    recipe: str = Field("default", max_length=PATH_MAX, description="Recipe this config came from.")
    model: ModelConfig = ModelConfig()
    peft: PeftConfig = PeftConfig()
    data: DataConfig = DataConfig()
    fl: FLConfig = FLConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    runtime: Literal["local", "flower-sim", "flower-deployment"] = Field(
        "local",
        description="Where clients run: local (one process, one model), flower-sim (Flower's Simulation Engine: "
        "a ServerApp and one virtual SuperNode per client, the same client round and strategy) or "
        "flower-deployment (the run is submitted to the SuperLink at flower.superlink; one SuperNode per client, "
        "started with its partition-id).",
    )
    flower: FlowerConfig = FlowerConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _combinations(self) -> RunConfig:
        quant = self.model.quantization
        if quant != "none" and METHODS.get(self.peft.method).trains_everything:
            raise ValueError(
                f"peft.method=full trains every base weight, but model.quantization={quant} stores them as integers; "
                "use an adapter method (lora on a 4bit base is QLoRA) or model.quantization=none"
            )
        if quant != "none" and self.fl.lora_aggregation == "stack":
            raise ValueError(
                f"fl.lora_aggregation=stack merges every round into the base weights, which model.quantization={quant} "
                "stores as integers; use separate or product, or model.quantization=none"
            )
        if self.train.packing and METHODS.get(self.peft.method).is_prompt:
            raise ValueError(
                f"train.packing puts several documents in one row; peft.method={self.peft.method} prepends its "
                "virtual tokens once per row, so documents after the first would not see them. Turn packing off"
            )
        if self.flower.secure_aggregation:
            self._check_secure_aggregation()
        self._check_client_data()
        if self.train.packing and not TASKS.get(self.data.task).supports_packing:
            packable = ", ".join(name for name in TASKS.names() if TASKS.get(name).supports_packing)
            raise ValueError(
                f"train.packing applies to the token-predicting tasks ({packable}); "
                f"data.task={self.data.task} scores whole examples"
            )
        return self

    def _check_client_data(self) -> None:
        """Clients' own files: one per client, on this machine for a rehearsal, on each node for a deployment."""
        files, deployed = self.data.client_files, self.runtime == "flower-deployment"
        if files and len(files) != self.fl.clients:
            raise ValueError(
                f"data.client_files has {len(files)} file(s) but fl.clients={self.fl.clients}; give one file per "
                "client (or set fl.clients to the number of files)"
            )
        if files and deployed:
            raise ValueError(
                "data.client_files rehearses a federation on one machine (runtime=local or flower-sim); on a "
                "deployment each node brings its file: set data.node_data=true and start each SuperNode with "
                "`fedpeft supernode --data FILE`"
            )
        if self.data.node_data and not deployed:
            raise ValueError(
                f"data.node_data=true reads each client's rows on its own SuperNode (runtime=flower-deployment), "
                f"not with runtime={self.runtime}; to rehearse on one machine, list the files in data.client_files"
            )

    def _check_secure_aggregation(self) -> None:
        """SecAgg+ reveals only the example-weighted mean of the clients' states: it needs Flower's processes,
        a strategy whose aggregate is that mean, and at least two clients per round."""
        where = "flower.secure_aggregation=true"
        if self.runtime == "local":
            raise ValueError(
                f"{where} masks what clients send to a server; use runtime=flower-sim or flower-deployment"
            )
        if self.fl.strategy not in ("fedavg", "fedprox"):
            raise ValueError(
                f"{where} gives the server only the example-weighted mean of the clients' states, which is what "
                f"fedavg and fedprox aggregate; fl.strategy={self.fl.strategy} needs each client's state"
            )
        if self.fl.lora_aggregation != "separate" or self.peft.client_ranks:
            raise ValueError(
                f"{where} averages the states as they are: use fl.lora_aggregation=separate, no peft.client_ranks"
            )
        if clients_per_round(self.fl.clients, self.fl.fraction) < 2:
            raise ValueError(f"{where} needs at least 2 clients per round (a mean of one reveals it)")
