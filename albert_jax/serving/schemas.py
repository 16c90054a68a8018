"""Request and response bodies of the API (pydantic: validation and the OpenAPI at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    sequence: str = Field(description="the input with the [MASK] filled in")
    score: float = Field(description="probability of the token at the mask")
    token: int = Field(description="vocabulary id")
    token_str: str


class InferenceRequest(BaseModel):
    """The hosted service's own contract."""

    input: str = Field(description="text with exactly one [MASK] token",
                       examples=["where is my [MASK]?"])
    top_k: int = Field(5, ge=1, le=1000, description="completions to return")
    targets: list[str] | str | None = Field(
        None, description="score only these tokens (vocabulary pieces or words)")


class InferenceStatus(BaseModel):
    status: str = "succeeded"
    runtime_ms: float = Field(description="billed device time: this request's share of its "
                                          "batch, apportioned by tokens")
    cost: float = Field(description="runtime in seconds x the model's price per second")
    tokens_input: int


class InferenceResponse(BaseModel):
    results: list[Prediction]
    request_id: str
    inference_status: InferenceStatus


class HFParameters(BaseModel):
    top_k: int = Field(5, ge=1, le=1000)
    targets: list[str] | str | None = None


class HFRequest(BaseModel):
    """The Hugging Face Inference API's fill-mask shape."""

    inputs: str | list[str] = Field(examples=["where is my [MASK]?"])
    parameters: HFParameters = Field(default_factory=HFParameters)


class ErrorResponse(BaseModel):
    error: str
    error_type: str


class ModelInfo(BaseModel):
    id: str
    source: str
    parameters: int
    hidden_size: int
    num_layers: int
    vocab_size: int
    max_length: int
    dtype: str
    price_per_second: float


class UsageDay(BaseModel):
    day: str
    model: str | None
    requests: int
    failed: int
    tokens: int
    runtime_s: float
    cost: float


class UsageResponse(BaseModel):
    key: str
    days: list[UsageDay]
